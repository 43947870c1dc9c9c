"""GPS tagging: interpolation, gaps, stale fixes, NO_FIX, order, duplicates, lever arm."""

import math
import threading

import pytest

from leaf_disease_ros.geo.geodesy import distance_m, latlon_to_utm, local_east_north_m
from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_DUPLICATE, ADD_REJECTED_NAN,
                                         ADD_REJECTED_NO_FIX, FixBuffer)
from leaf_disease_ros.perception.positions import (Fix, REASON_GPS_NO_FIX, REASON_INTERPOLATED,
                                                   REASON_NEAREST, REASON_NO_FIX_RECEIVED,
                                                   REASON_STALE_FIX, STATUS_FIX, STATUS_GBAS_FIX,
                                                   STATUS_NO_FIX, STATUS_SBAS_FIX)

S = 1_000_000_000
LAT0, LON0 = 46.2, 7.3


def fix(t_s, north_m=0.0, east_m=0.0, status=STATUS_GBAS_FIX, var=0.01, alt=400.0):
    """Return a fix ``north_m``/``east_m`` from the reference point at ``t_s`` seconds."""
    from leaf_disease_ros.geo.geodesy import offset_latlon
    lat, lon = offset_latlon(LAT0, LON0, east_m, north_m)
    cov = (var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, 4 * var)
    return Fix(int(t_s * S), lat, lon, alt, status, 1, cov, 2)


def lookup(buf, t_s, gap=1.0, age=0.5, **kwargs):
    """Look up the position at ``t_s`` seconds."""
    return buf.lookup(int(t_s * S), gap, age, **kwargs)


def test_interpolates_between_bracketing_fixes():
    buf = FixBuffer()
    buf.add(fix(10.0, north_m=0.0, alt=400.0))
    buf.add(fix(10.2, north_m=1.0, alt=402.0))
    res = lookup(buf, 10.05)
    assert res.reason == REASON_INTERPOLATED
    tag = res.geotag
    east, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    assert north == pytest.approx(0.25, abs=1e-3) and east == pytest.approx(0.0, abs=1e-6)
    assert tag.altitude_m == pytest.approx(400.5)
    assert tag.fix_age_s == pytest.approx(0.05)
    assert tag.stamp_ns == int(10.05 * S)


def test_interpolation_takes_worse_status_and_larger_covariance():
    buf = FixBuffer()
    buf.add(fix(1.0, status=STATUS_GBAS_FIX, var=0.01))
    buf.add(fix(1.2, status=STATUS_SBAS_FIX, var=0.5))
    tag = lookup(buf, 1.1).geotag
    assert tag.status == STATUS_SBAS_FIX
    assert tag.covariance_m2[0] == 0.5 and tag.covariance_m2[8] == 2.0


def test_gap_too_wide_falls_back_to_nearest_within_age():
    buf = FixBuffer()
    buf.add(fix(10.0, north_m=0.0))
    buf.add(fix(13.0, north_m=3.0))
    res = lookup(buf, 10.3, gap=1.0, age=0.5)
    assert res.reason == REASON_NEAREST
    assert res.geotag.fix_age_s == pytest.approx(0.3)
    _, north = local_east_north_m(res.geotag.latitude_deg, res.geotag.longitude_deg, LAT0, LON0)
    assert north == pytest.approx(0.0, abs=1e-6)


def test_stale_fix_gives_no_position_never_the_latest():
    buf = FixBuffer()
    buf.add(fix(10.0))
    buf.add(fix(13.0))
    res = lookup(buf, 11.5, gap=1.0, age=0.5)
    assert res.geotag is None and res.reason == REASON_STALE_FIX
    # an image after the newest fix, beyond max age: no position either
    assert lookup(buf, 14.0).reason == REASON_STALE_FIX


def test_nearest_after_the_stamp_is_used_too():
    buf = FixBuffer()
    buf.add(fix(20.0))
    res = lookup(buf, 19.8)
    assert res.reason == REASON_NEAREST and res.geotag.fix_age_s == pytest.approx(0.2)


def test_empty_buffer():
    assert lookup(FixBuffer(), 1.0).reason == REASON_NO_FIX_RECEIVED


def test_no_fix_and_nan_are_rejected_and_reported_as_outage():
    buf = FixBuffer()
    assert buf.add(fix(1.0)) == ADD_ACCEPTED
    assert buf.add(fix(2.0, status=STATUS_NO_FIX)) == ADD_REJECTED_NO_FIX
    nan_fix = Fix(int(2.2 * S), math.nan, math.nan, math.nan, STATUS_FIX)
    assert buf.add(nan_fix) == ADD_REJECTED_NAN
    assert len(buf) == 1 and buf.rejected_no_fix == 1 and buf.rejected_nan == 1
    res = lookup(buf, 2.1)
    assert res.geotag is None and res.reason == REASON_GPS_NO_FIX
    # the outage never bridges: interpolation between 1.0 and a later fix 3.0 s apart
    buf.add(fix(4.0))
    assert lookup(buf, 2.5, gap=1.0).geotag is None


def test_out_of_order_arrival():
    in_order, shuffled = FixBuffer(), FixBuffer()
    fixes = [fix(t / 5.0, north_m=t * 0.2) for t in range(10)]
    for f in fixes:
        in_order.add(f)
    for i in (3, 0, 9, 1, 7, 2, 8, 4, 6, 5):
        shuffled.add(fixes[i])
    for t in (0.1, 0.55, 1.3, 1.79):
        assert lookup(in_order, t).geotag == lookup(shuffled, t).geotag


def test_duplicate_stamp_replaces():
    buf = FixBuffer()
    buf.add(fix(1.0, north_m=0.0))
    assert buf.add(fix(1.0, north_m=5.0)) == ADD_DUPLICATE
    assert len(buf) == 1 and buf.duplicates == 1
    tag = lookup(buf, 1.0).geotag
    _, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    assert north == pytest.approx(5.0, abs=1e-3) and tag.fix_age_s == 0.0


def test_capacity_evicts_oldest():
    buf = FixBuffer(capacity=3)
    for t in range(5):
        buf.add(fix(float(t)))
    assert len(buf) == 3 and buf.evicted == 2
    assert lookup(buf, 0.0).geotag is None
    assert buf.newest().stamp_ns == 4 * S


def test_status_and_covariance_carried_from_nearest():
    buf = FixBuffer()
    buf.add(fix(5.0, status=STATUS_FIX, var=2.5))
    tag = lookup(buf, 5.1).geotag
    assert tag.status == STATUS_FIX and tag.covariance_m2[0] == 2.5 and tag.covariance_type == 2


def test_lever_arm_rotated_by_course_over_ground():
    buf = FixBuffer()
    for i in range(11):  # driving north at 1 m/s
        buf.add(fix(i * 0.2, north_m=i * 0.2))
    # camera 1 m forward and 0.5 m to the left of the antenna, 0.3 m up
    res = lookup(buf, 1.0, lever_arm_m=(1.0, 0.5, 0.3), min_speed_mps=0.3,
                 heading_window_s=1.0)
    tag = res.geotag
    assert tag.lever_arm_applied and tag.lever_arm_note == ''
    assert tag.heading_enu_rad == pytest.approx(math.pi / 2, abs=1e-3)
    assert tag.speed_mps == pytest.approx(1.0, rel=1e-3)
    east, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    # forward = north, left = west
    assert north == pytest.approx(1.0 + 1.0, abs=1e-3)
    assert east == pytest.approx(-0.5, abs=1e-3)
    assert tag.altitude_m == pytest.approx(400.3)


def test_lever_arm_skipped_when_not_moving():
    buf = FixBuffer()
    for i in range(11):
        buf.add(fix(i * 0.2, north_m=0.001 * i))
    tag = lookup(buf, 1.0, lever_arm_m=(1.0, 0.0, 0.0), min_speed_mps=0.3).geotag
    assert not tag.lever_arm_applied
    assert 'not moving' in tag.lever_arm_note
    east, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    assert abs(north) < 0.01 and abs(east) < 1e-6


def test_lever_arm_needs_two_fixes_in_window():
    buf = FixBuffer()
    buf.add(fix(1.0))
    tag = lookup(buf, 1.0, lever_arm_m=(1.0, 0.0, 0.0)).geotag
    assert not tag.lever_arm_applied and 'fewer than 2 fixes' in tag.lever_arm_note


def test_concurrent_add_and_lookup():
    buf = FixBuffer(capacity=10000)
    errors = []

    def writer():
        for i in range(2000):
            buf.add(fix(i * 0.01, north_m=i * 0.01))

    def reader():
        try:
            for i in range(2000):
                res = lookup(buf, i * 0.01)
                if res.geotag is not None and not math.isfinite(res.geotag.latitude_deg):
                    errors.append(i)
        except Exception as exc:  # noqa: B902 - the test reports any failure of a thread
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(buf) == 2000


def test_geodesy_reference_values():
    # utm package README example and a southern-hemisphere point
    utm = latlon_to_utm(51.2, 7.5)
    assert (utm.zone, utm.band, utm.northern) == (32, 'U', True)
    assert utm.easting_m == pytest.approx(395201.3104, abs=0.01)
    assert utm.northing_m == pytest.approx(5673135.2412, abs=0.01)
    south = latlon_to_utm(-33.8688, 151.2093)
    assert (south.zone, south.northern) == (56, False)
    assert south.northing_m == pytest.approx(6250948.35, abs=0.5)
    assert latlon_to_utm(60.0, 5.0).zone == 32  # Norway exception
    assert distance_m(46.0, 7.0, 46.001, 7.0) == pytest.approx(111.15, abs=0.05)
