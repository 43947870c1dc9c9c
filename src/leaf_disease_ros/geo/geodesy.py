"""
WGS84 helpers: local metric offsets, distances and the UTM projection.

Hand-written rather than pyproj because the runtime must stay numpy + OpenCV +
onnxruntime (pyproj brings PROJ and its data). The formulas are textbook:

- local east/north offsets use the meridian and prime-vertical radii of curvature
  at the reference latitude: exact to millimetres over the few hundred metres of a
  vineyard block. Results are always valid coordinates: longitudes in [-180, 180)
  (an offset across the antimeridian wraps), latitudes in [-90, 90] (an offset over
  a pole comes down the other side), and no division by zero at the poles;
- :func:`great_circle_m` (haversine on the mean Earth radius) measures any distance,
  short or across the globe, for plausibility checks;
- UTM uses the Krueger series to 4th order in ``n`` (Karney 2011, "Transverse
  Mercator with an accuracy of a few nanometres"), sub-millimetre within a zone, with
  the Norway and Svalbard zone exceptions.
"""

from dataclasses import dataclass
import math
from typing import Optional, Tuple

WGS84_A_M = 6378137.0
WGS84_F = 1.0 / 298.257223563
_E2 = WGS84_F * (2.0 - WGS84_F)
_K0 = 0.9996
_FALSE_EASTING_M = 500000.0
_FALSE_NORTHING_SOUTH_M = 10000000.0
_N = WGS84_F / (2.0 - WGS84_F)
_A_RECT = WGS84_A_M / (1.0 + _N) * (1.0 + _N ** 2 / 4.0 + _N ** 4 / 64.0)
_ALPHA = (
    _N / 2.0 - 2.0 * _N ** 2 / 3.0 + 5.0 * _N ** 3 / 16.0 + 41.0 * _N ** 4 / 180.0,
    13.0 * _N ** 2 / 48.0 - 3.0 * _N ** 3 / 5.0 + 557.0 * _N ** 4 / 1440.0,
    61.0 * _N ** 3 / 240.0 - 103.0 * _N ** 4 / 140.0,
    49561.0 * _N ** 4 / 161280.0,
)
_BAND_LETTERS = 'CDEFGHJKLMNPQRSTUVWX'
#: the latitudes UTM covers; beyond them (the polar caps) a position has no UTM coordinate
UTM_MIN_LATITUDE_DEG = -80.0
UTM_MAX_LATITUDE_DEG = 84.0
MEAN_EARTH_RADIUS_M = 6371008.8
# cos(latitude) below this counts as the pole (about 1e-7 degrees from it)
_MIN_COS_LATITUDE = 1e-9


def normalize_longitude(longitude_deg: float) -> float:
    """Return a longitude in [-180, 180) (180 and -180 are the same meridian)."""
    if -180.0 <= longitude_deg < 180.0:
        return longitude_deg
    return (longitude_deg + 180.0) % 360.0 - 180.0


def _fold_latitude(latitude_deg: float, longitude_deg: float) -> Tuple[float, float]:
    """Bring a latitude past a pole back into [-90, 90] (and turn the longitude round)."""
    if latitude_deg > 90.0:
        return 180.0 - latitude_deg, normalize_longitude(longitude_deg + 180.0)
    if latitude_deg < -90.0:
        return -180.0 - latitude_deg, normalize_longitude(longitude_deg + 180.0)
    return latitude_deg, normalize_longitude(longitude_deg)


def radii_of_curvature_m(latitude_deg: float) -> Tuple[float, float]:
    """Return (meridian M, prime vertical N) radii in metres at a latitude."""
    s = math.sin(math.radians(latitude_deg))
    w = math.sqrt(1.0 - _E2 * s * s)
    return WGS84_A_M * (1.0 - _E2) / w ** 3, WGS84_A_M / w


def offset_latlon(latitude_deg: float, longitude_deg: float, east_m: float,
                  north_m: float) -> Tuple[float, float]:
    """
    Return the (latitude, longitude) in degrees ``east_m``/``north_m`` away.

    The longitude is normalised to [-180, 180); a latitude past a pole is folded back.
    At a pole itself "east" has no direction: only the northing moves the point.
    """
    meridian, prime = radii_of_curvature_m(latitude_deg)
    lat = latitude_deg + math.degrees(north_m / meridian)
    cos_lat = math.cos(math.radians(latitude_deg))
    lon = longitude_deg
    if abs(cos_lat) >= _MIN_COS_LATITUDE:
        lon = longitude_deg + math.degrees(east_m / (prime * cos_lat))
    return _fold_latitude(lat, lon)


def local_east_north_m(latitude_deg: float, longitude_deg: float, ref_latitude_deg: float,
                       ref_longitude_deg: float) -> Tuple[float, float]:
    """Return (east, north) metres of a point from a reference point (local tangent plane)."""
    meridian, prime = radii_of_curvature_m(ref_latitude_deg)
    dlat = math.radians(latitude_deg - ref_latitude_deg)
    dlon = math.radians((longitude_deg - ref_longitude_deg + 540.0) % 360.0 - 180.0)
    return (dlon * prime * math.cos(math.radians(ref_latitude_deg)), dlat * meridian)


def distance_m(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Return the ground distance in metres between two nearby points (local plane)."""
    east, north = local_east_north_m(lat2_deg, lon2_deg, lat1_deg, lon1_deg)
    return math.hypot(east, north)


def great_circle_m(lat1_deg: float, lon1_deg: float, lat2_deg: float,
                   lon2_deg: float) -> float:
    """Return the great-circle distance in metres (haversine, any two points, 0.5 % accurate)."""
    phi1, phi2 = math.radians(lat1_deg), math.radians(lat2_deg)
    dphi = phi2 - phi1
    dlam = math.radians((lon2_deg - lon1_deg + 540.0) % 360.0 - 180.0)
    h = math.sin(dphi / 2.0) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2.0) ** 2
    return 2.0 * MEAN_EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def in_utm_domain(latitude_deg: float, longitude_deg: float = 0.0) -> bool:
    """Return whether UTM covers the position (-80 to 84 degrees, finite longitude)."""
    return (UTM_MIN_LATITUDE_DEG <= latitude_deg <= UTM_MAX_LATITUDE_DEG
            and math.isfinite(longitude_deg))


@dataclass(frozen=True)
class UtmPoint:
    """A UTM position: zone 1-60, band letter, hemisphere, easting/northing in metres."""

    zone: int
    band: str
    northern: bool
    easting_m: float
    northing_m: float

    @property
    def zone_name(self) -> str:
        """Return e.g. ``'32U'``."""
        return f'{self.zone}{self.band}'


def utm_zone(latitude_deg: float, longitude_deg: float) -> int:
    """Return the UTM zone number, with the Norway (32V) and Svalbard exceptions."""
    lon = (longitude_deg + 180.0) % 360.0 - 180.0
    zone = int((lon + 180.0) // 6.0) + 1
    if 56.0 <= latitude_deg < 64.0 and 3.0 <= lon < 12.0:
        return 32
    if 72.0 <= latitude_deg <= 84.0 and lon >= 0.0:
        if lon < 9.0:
            return 31
        if lon < 21.0:
            return 33
        if lon < 33.0:
            return 35
        if lon < 42.0:
            return 37
    return min(zone, 60)


def latlon_to_utm(latitude_deg: float, longitude_deg: float, zone: int = 0,
                  northern: Optional[bool] = None) -> UtmPoint:
    """
    Project WGS84 latitude/longitude (degrees) to UTM.

    :param latitude_deg: -80 to 84 degrees (UTM's domain).
    :param longitude_deg: degrees east.
    :param zone: force a zone (1-60), e.g. to keep a whole block in one zone; 0 = natural.
    :param northern: force the hemisphere (its false northing: 0 m north, 10 000 km
        south), e.g. to keep a run in one EPSG code; None = the position's own. A
        position just across the equator then has a northing below 0 m (north) or
        above 10 000 km (south), as in that EPSG code.

    :raises ValueError: latitude outside UTM's domain, or a bad zone.
    """
    if not in_utm_domain(latitude_deg, longitude_deg):
        raise ValueError(f'latitude {latitude_deg} is outside UTM (-80..84 degrees)')
    if zone == 0:
        zone = utm_zone(latitude_deg, longitude_deg)
    if not 1 <= zone <= 60:
        raise ValueError(f'UTM zone {zone} is not in 1..60')
    central_deg = zone * 6.0 - 183.0
    phi = math.radians(latitude_deg)
    lam = math.radians((longitude_deg - central_deg + 540.0) % 360.0 - 180.0)
    two_sqrt_n = 2.0 * math.sqrt(_N) / (1.0 + _N)
    t = math.sinh(math.atanh(math.sin(phi)) - two_sqrt_n * math.atanh(two_sqrt_n * math.sin(phi)))
    xi = math.atan2(t, math.cos(lam))
    eta = math.atanh(math.sin(lam) / math.sqrt(1.0 + t * t))
    east = eta
    north = xi
    for j, alpha in enumerate(_ALPHA, start=1):
        east += alpha * math.cos(2 * j * xi) * math.sinh(2 * j * eta)
        north += alpha * math.sin(2 * j * xi) * math.cosh(2 * j * eta)
    easting = _FALSE_EASTING_M + _K0 * _A_RECT * east
    northing = _K0 * _A_RECT * north
    if northern is None:
        northern = latitude_deg >= 0.0
    if not northern:
        northing += _FALSE_NORTHING_SOUTH_M
    band_index = min(int((latitude_deg + 80.0) // 8.0), len(_BAND_LETTERS) - 1)
    return UtmPoint(zone, _BAND_LETTERS[band_index], northern, easting, northing)


def utm_or_none(latitude_deg: float, longitude_deg: float) -> Optional[UtmPoint]:
    """Return the UTM position, or None where UTM does not reach (polar caps, bad input)."""
    if not in_utm_domain(latitude_deg, longitude_deg):
        return None
    return latlon_to_utm(latitude_deg, longitude_deg)
