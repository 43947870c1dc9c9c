"""
The run's UTM zone: one zone (number + hemisphere) for every position of a run.

Projecting each position into its own zone mixes zones in one run: a block across a
zone boundary (every 6 degrees of longitude) would jump by hundreds of kilometres in
``~/geo_detections``. As robot_localization's navsat_transform does
(``src/navsat_transform.cpp``: ``setTransformGps`` takes the zone from the first
good fix, status not NO_FIX and no NaN, or the one the user set through
``setUTMZone``), a run keeps one zone:

- the ``utm_zone`` parameter in robot_localization's form (``srv/SetUTMZone.srv``:
  ``string utm_zone``, read with GeographicLib's ``MGRS::Reverse``): zone number
  and MGRS latitude band, e.g. ``'31U'``; bands C-M are south of the equator, N-X
  north. The band only says the hemisphere: the projection is the zone's;
- otherwise the zone of the first valid fix (the first the fix buffer accepts, which
  checks status and NaN as navsat_transform does, and also glitches).

The zone is then fixed for the run (a time jump that clears the fix buffer keeps
it), and so is the hemisphere: every position is in the one EPSG code,
``326<zone>`` (north) or ``327<zone>`` (south). A position the zone cannot carry
is left out (:meth:`RunZone.project` returns None): beyond UTM's latitudes, or with
an easting or northing outside the ranges GeographicLib's ``UTMUPS::CheckCoords``
allows a forced zone (easting 0 to 1000 km, i.e. 100 km beyond the 100-900 km of a
zone's own area; northing at most 100 km across the equator), roughly more than one
zone away.
"""

from dataclasses import dataclass
import threading
from typing import Callable, Optional

from leaf_disease_ros.geo.geodesy import in_utm_domain, latlon_to_utm, UtmPoint
from leaf_disease_ros.perception.config import UTM_ZONE_PATTERN
from leaf_disease_ros.perception.positions import Fix

#: GeographicLib's UTMUPS::CheckCoords limits for a forced UTM zone (with its 100 km slop)
MIN_EASTING_M = 0.0
MAX_EASTING_M = 1_000_000.0
EQUATOR_SLOP_M = 100_000.0
_SOUTH_FALSE_NORTHING_M = 10_000_000.0
#: the first band letter north of the equator (MGRS bands C..M south, N..X north)
_FIRST_NORTHERN_BAND = 'N'


@dataclass(frozen=True)
class UtmZone:
    """A UTM zone of a run: number 1-60, hemisphere, and the MGRS band it was named with."""

    number: int
    northern: bool
    band: str

    @property
    def name(self) -> str:
        """Return the zone as robot_localization's setUTMZone takes it, e.g. ``'31U'``."""
        return f'{self.number}{self.band}'

    @property
    def epsg(self) -> int:
        """Return the EPSG code of the zone's projection (WGS 84 / UTM): 326xx or 327xx."""
        return (32600 if self.northern else 32700) + self.number

    @property
    def hemisphere(self) -> str:
        """Return ``'north'`` or ``'south'``."""
        return 'north' if self.northern else 'south'

    def describe(self) -> str:
        """Return e.g. ``'31U (EPSG:32631, north)'`` for reports and logs."""
        return f'{self.name} (EPSG:{self.epsg}, {self.hemisphere})'


def parse_utm_zone(text: str) -> Optional[UtmZone]:
    """
    Return the zone named by a ``utm_zone`` parameter, None for ``''``.

    :raises ValueError: not a zone number 1-60 followed by an MGRS band letter
        (``perception/config.py`` checks the parameter with the same pattern).
    """
    if not text:
        return None
    match = UTM_ZONE_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f'{text!r} is not a UTM zone such as 31U')
    band = match.group(2)
    return UtmZone(int(match.group(1)), band >= _FIRST_NORTHERN_BAND, band)


def zone_of(latitude_deg: float, longitude_deg: float) -> Optional[UtmZone]:
    """Return the natural zone of a position (Norway/Svalbard rules), None beyond UTM."""
    if not in_utm_domain(latitude_deg, longitude_deg):
        return None
    point = latlon_to_utm(latitude_deg, longitude_deg)
    return UtmZone(point.zone, point.northern, point.band)


class RunZone:
    """
    The one UTM zone of a run, chosen once; thread-safe.

    :param fixed: the ``utm_zone`` parameter's zone, or None to take the first valid
        position's.
    :param on_chosen: called once (outside the lock) with the zone when it is chosen
        from a position; not called for ``fixed``.
    """

    def __init__(self, fixed: Optional[UtmZone] = None,
                 on_chosen: Optional[Callable[[UtmZone], None]] = None) -> None:
        """Hold ``fixed``, or nothing until the first valid position."""
        self._lock = threading.Lock()
        self._zone = fixed
        self.from_parameter = fixed is not None
        self._on_chosen = on_chosen

    @property
    def zone(self) -> Optional[UtmZone]:
        """Return the run's zone, None until the first valid position."""
        return self._zone

    def observe(self, latitude_deg: float, longitude_deg: float) -> bool:
        """
        Take the zone from this position when the run has none yet; return whether it did.

        Call it with valid positions only (fixes the fix buffer accepted). A position
        beyond UTM chooses nothing.
        """
        with self._lock:
            if self._zone is not None:
                return False
            zone = zone_of(latitude_deg, longitude_deg)
            if zone is None:
                return False
            self._zone = zone
        if self._on_chosen is not None:
            self._on_chosen(zone)
        return True

    def observe_fix(self, fix: Optional[Fix]) -> bool:
        """Observe a fix the fix buffer accepted (``Admission.fix``; None: rejected)."""
        return fix is not None and self.observe(fix.latitude_deg, fix.longitude_deg)

    def project(self, latitude_deg: float, longitude_deg: float) -> Optional[UtmPoint]:
        """
        Return the position in the run's zone (choosing it from this position if none yet).

        None where the zone cannot carry the position (module docstring): beyond UTM's
        latitudes, or too far from the zone.
        """
        if not in_utm_domain(latitude_deg, longitude_deg):
            return None
        self.observe(latitude_deg, longitude_deg)
        zone = self._zone
        if zone is None:
            return None
        point = latlon_to_utm(latitude_deg, longitude_deg, zone.number, zone.northern)
        if not MIN_EASTING_M <= point.easting_m <= MAX_EASTING_M:
            return None
        if zone.northern and point.northing_m < -EQUATOR_SLOP_M:
            return None
        if not zone.northern and point.northing_m > _SOUTH_FALSE_NORTHING_M + EQUATOR_SLOP_M:
            return None
        return point
