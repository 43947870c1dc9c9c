"""
geo/utm_zone.py: one UTM zone per run, named as robot_localization's setUTMZone takes it.

The node and the replay through it are in test_node_wiring.py and test_replay.py.
"""

import pytest

from leaf_disease_ros.geo.geodesy import distance_m, latlon_to_utm
from leaf_disease_ros.geo.utm_zone import parse_utm_zone, RunZone, UtmZone, zone_of
from leaf_disease_ros.perception.config import validate_parameters
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.positions import Fix, STATUS_FIX

# the boundary of zones 31 and 32 is the meridian 6 E (south of Norway's exception)
LAT = 45.0
WEST, EAST = 5.9999, 6.0001  # 15.8 m apart, in zones 31 and 32


@pytest.mark.parametrize('text,number,northern,epsg', [
    ('31U', 31, True, 32631), ('56H', 56, False, 32756), ('1C', 1, False, 32701),
    ('60X', 60, True, 32660),
    ('33S', 33, True, 32633),  # MGRS band S is 32-40 N, not "south"
    ('33M', 33, False, 32733)])
def test_a_zone_parameter_names_number_hemisphere_and_epsg(text, number, northern, epsg):
    zone = parse_utm_zone(text)
    assert (zone.number, zone.northern, zone.epsg, zone.name) == (number, northern, epsg, text)
    assert validate_parameters({'utm_zone': text})['utm_zone'] == text


@pytest.mark.parametrize('text', ['31u', '31s', '31', 'U31', '0U', '61U', '31I', '31O',
                                  '31UU', ' 31U', '31Y', '031U'])
def test_a_malformed_zone_is_refused_at_start_naming_the_fix(text):
    with pytest.raises(ConfigError, match="utm_zone.*e.g. '31U'"):
        validate_parameters({'utm_zone': text})
    with pytest.raises(ValueError):
        parse_utm_zone(text)


def test_an_empty_zone_means_the_first_valid_fix():
    assert parse_utm_zone('') is None
    assert validate_parameters({})['utm_zone'] == ''


def test_the_natural_zone_keeps_norway_and_gives_the_band():
    assert zone_of(LAT, WEST) == UtmZone(31, True, 'T')
    assert zone_of(LAT, EAST) == UtmZone(32, True, 'T')
    assert zone_of(60.0, 5.0).number == 32  # 32V covers 3-12 E
    assert zone_of(-33.87, 151.21) == UtmZone(56, False, 'H')
    assert zone_of(85.0, 0.0) is None  # beyond UTM


def test_a_run_across_a_zone_boundary_stays_in_the_first_zone():
    run = RunZone()
    west = run.project(LAT, WEST)
    east = run.project(LAT, EAST)
    assert run.zone == UtmZone(31, True, 'T')
    assert (west.zone, east.zone) == (31, 31)
    # continuous: the two points are as far apart in the zone as on the ground (grid
    # easting = distance x scale factor 1.0003 x cos(grid convergence 2.1 deg) = 0.9996)
    ground_m = distance_m(LAT, WEST, LAT, EAST)
    assert east.easting_m - west.easting_m == pytest.approx(0.9996 * ground_m, rel=1e-4)
    # each in its own zone (the old behaviour) they were 472 km apart in easting
    natural = latlon_to_utm(LAT, EAST)
    assert natural.zone == 32 and west.easting_m - natural.easting_m > 400_000.0


def test_the_first_valid_fix_chooses_once_and_says_so():
    chosen = []
    run = RunZone(on_chosen=chosen.append)
    assert not run.observe_fix(None)  # a rejected fix chooses nothing
    assert not run.observe(85.0, 6.0)  # nor one beyond UTM
    assert run.observe_fix(Fix(1, LAT, EAST, 300.0, STATUS_FIX))
    assert not run.observe(LAT, WEST)  # later fixes never move it
    assert chosen == [UtmZone(32, True, 'T')] and run.zone.epsg == 32632
    assert not run.from_parameter


def test_the_parameter_zone_wins_over_the_fixes():
    chosen = []
    run = RunZone(parse_utm_zone('32T'), on_chosen=chosen.append)
    assert run.from_parameter and not run.observe(LAT, WEST) and chosen == []
    point = run.project(LAT, WEST)
    assert point.zone == 32
    assert point.easting_m == pytest.approx(latlon_to_utm(LAT, WEST, 32).easting_m)


def test_the_hemisphere_is_the_runs_across_the_equator():
    run = RunZone(parse_utm_zone('37N'))  # EPSG:32637
    south = run.project(-0.01, 39.0)
    assert south.northern and south.northing_m == pytest.approx(-1105.7, abs=1.0)
    natural = latlon_to_utm(-0.01, 39.0)
    assert natural.northing_m == pytest.approx(10_000_000 - 1105.7, abs=1.0)
    far_south = run.project(-1.0, 39.0)  # 110 km south: beyond GeographicLib's 100 km slop
    assert far_south is None
    southern = RunZone(parse_utm_zone('37M'))  # EPSG:32737
    assert southern.project(0.01, 39.0).northing_m == pytest.approx(10_001_105.7, abs=1.0)


def test_a_position_too_far_from_the_zone_is_left_out():
    run = RunZone(parse_utm_zone('31T'))  # central meridian 3 E
    assert run.project(LAT, 9.0) is not None  # one zone east: easting 736 km
    assert run.project(LAT, 12.0) is None  # two zones east: easting beyond 1000 km
    assert run.project(LAT, -6.0) is None
    assert run.project(85.0, 3.0) is None  # beyond UTM's latitudes
