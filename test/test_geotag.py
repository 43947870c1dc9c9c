"""GPS tagging: validation, glitches, interpolation, gaps, outages, order, lever arm, edges."""

import math
import threading

import pytest

from leaf_disease_ros.geo.geodesy import (distance_m, latlon_to_utm, local_east_north_m,
                                          offset_latlon)
from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_DUPLICATE, ADD_REJECTED_JUMP,
                                         ADD_REJECTED_LATITUDE, ADD_REJECTED_NAN,
                                         ADD_REJECTED_NO_FIX, FixBuffer, REANCHOR_AFTER)
from leaf_disease_ros.perception.positions import (Fix, REASON_GPS_NO_FIX, REASON_INTERPOLATED,
                                                   REASON_NEAREST, REASON_NO_FIX_RECEIVED,
                                                   REASON_NO_IMAGE_STAMP, REASON_STALE_FIX,
                                                   STATUS_FIX, STATUS_GBAS_FIX, STATUS_NO_FIX,
                                                   STATUS_SBAS_FIX)

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


# --- validation where fixes enter, the plausibility gate (issue 11) -------------------


def track(buf, count=20, speed_mps=1.0, period_s=0.2, start_s=0.0, **kwargs):
    """Add a straight track north at ``speed_mps``; return the fixes."""
    fixes = [fix(start_s + k * period_s, north_m=speed_mps * k * period_s, **kwargs)
             for k in range(count)]
    for f in fixes:
        assert buf.add(f) == ADD_ACCEPTED
    return fixes


@pytest.mark.parametrize('latitude', [91.0, 95.0, -90.5, 1e9])
def test_latitude_beyond_the_pole_is_rejected_and_counted(latitude):
    buf = FixBuffer()
    track(buf, 5)
    bad = Fix(int(0.5 * S), latitude, LON0, 400.0, STATUS_GBAS_FIX)
    assert buf.add(bad) == ADD_REJECTED_LATITUDE
    assert buf.rejected_latitude == 1 and len(buf) == 5
    assert buf.stats()['rejected_latitude'] == 1
    # not an outage: the good fixes around it still interpolate
    assert lookup(buf, 0.5).reason == REASON_INTERPOLATED


@pytest.mark.parametrize('bad', [math.inf, -math.inf, math.nan])
def test_infinite_or_nan_coordinates_are_outages(bad):
    buf = FixBuffer()
    assert buf.add(Fix(S, bad, LON0)) == ADD_REJECTED_NAN
    assert buf.add(Fix(S, LAT0, bad)) == ADD_REJECTED_NAN
    assert buf.rejected_nan == 2 and len(buf) == 0


def test_longitude_is_normalised_where_it_enters():
    buf = FixBuffer()
    admission = buf.admit(Fix(S, 10.0, 200.0))
    assert admission.outcome == ADD_ACCEPTED and admission.fix.longitude_deg == -160.0
    assert buf.longitude_wrapped == 1
    assert lookup(buf, 1.0).geotag.longitude_deg == -160.0
    assert FixBuffer().admit(Fix(2 * S, 10.0, -540.0)).fix.longitude_deg == -180.0


def test_non_finite_altitude_and_covariance_become_unknown():
    buf = FixBuffer()
    nan_cov = (math.nan,) + (0.0,) * 8
    stored = buf.admit(Fix(S, LAT0, LON0, math.inf, STATUS_FIX, 1, nan_cov, 2)).fix
    assert math.isnan(stored.altitude_m)
    assert stored.covariance_type == 0 and stored.covariance_m2 == (0.0,) * 9


def test_one_glitch_never_drags_the_interpolated_position():
    # Case 1 of issue 11: a fix 4,000 km away (or at 82 N) 0.05 s before a frame was
    # interpolated and dragged a map feature thousands of kilometres.
    buf = FixBuffer(max_speed_mps=10.0)
    track(buf, 10)
    glitch = Fix(int(1.05 * S), 82.47, LON0, 400.0, STATUS_GBAS_FIX)
    assert buf.add(glitch) == ADD_REJECTED_JUMP
    far = fix(1.15, north_m=4.0e6)
    assert buf.add(far) == ADD_REJECTED_JUMP
    assert buf.rejected_jump == 2 and len(buf) == 10
    tag = lookup(buf, 1.1).geotag
    _, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    assert tag.method == REASON_INTERPOLATED and north == pytest.approx(1.1, abs=1e-3)


def test_the_gate_allows_for_the_covariance_and_can_be_turned_off():
    buf = FixBuffer(max_speed_mps=1.0)
    track(buf, 3, var=1.0)  # sigma 1 m: a 3 m wobble in 0.2 s is noise, not a jump
    assert buf.add(fix(0.6, north_m=0.6 + 3.0, var=1.0)) == ADD_ACCEPTED
    assert buf.add(fix(0.8, north_m=0.8 + 30.0, var=1.0)) == ADD_REJECTED_JUMP
    off = FixBuffer(max_speed_mps=0.0)
    track(off, 3)
    assert off.add(fix(0.6, north_m=1.0e6)) == ADD_ACCEPTED


def test_a_wrong_first_fix_is_replaced_by_a_consistent_track():
    buf = FixBuffer(max_speed_mps=10.0)
    assert buf.add(fix(0.0, north_m=50_000.0)) == ADD_ACCEPTED  # nothing to check it against
    outcomes = [buf.add(fix(0.2 * k, north_m=0.2 * k)) for k in range(1, 1 + REANCHOR_AFTER)]
    assert outcomes == [ADD_REJECTED_JUMP] * (REANCHOR_AFTER - 1) + [ADD_ACCEPTED]
    stats = buf.stats()
    assert stats['reanchored'] == 1 and stats['discarded_at_reanchor'] == 1
    assert stats['rejected_jump'] == 0 and stats['accepted'] == 1 + REANCHOR_AFTER
    assert len(buf) == REANCHOR_AFTER
    tag = lookup(buf, 0.3).geotag
    _, north = local_east_north_m(tag.latitude_deg, tag.longitude_deg, LAT0, LON0)
    assert north == pytest.approx(0.3, abs=1e-3)


def test_a_polar_position_is_a_valid_fix():
    buf = FixBuffer()
    for k in range(3):
        assert buf.add(Fix(k * S, 88.0, 10.0 + 0.00001 * k)) == ADD_ACCEPTED
    assert lookup(buf, 1.5).geotag.latitude_deg == 88.0


# --- the outage rule and the boundaries (issue 11's audit) ---------------------------


def test_a_reported_outage_between_two_good_fixes_is_never_bridged():
    # Good fixes at 0 s and 0.8 s (gap 0.8 <= max_fix_gap_s 1.0), NO_FIX at 0.4 s.
    control = FixBuffer()
    control.add(fix(0.0, north_m=0.0))
    control.add(fix(0.8, north_m=0.8))
    assert lookup(control, 0.4).reason == REASON_INTERPOLATED
    buf = FixBuffer()
    buf.add(fix(0.0, north_m=0.0))
    buf.add(fix(0.8, north_m=0.8))
    assert buf.add(fix(0.4, status=STATUS_NO_FIX)) == ADD_REJECTED_NO_FIX
    # at the outage: no fix describes it
    res = lookup(buf, 0.4)
    assert res.geotag is None and res.reason == REASON_GPS_NO_FIX
    # before the outage: the fix on this side of it, by the nearest rule, not interpolated
    res = lookup(buf, 0.2)
    assert res.reason == REASON_NEAREST and res.geotag.fix_age_s == pytest.approx(0.2)
    _, north = local_east_north_m(res.geotag.latitude_deg, res.geotag.longitude_deg, LAT0,
                                  LON0)
    assert north == pytest.approx(0.0, abs=1e-6)
    # after it: the fix after it; never the one from before the outage
    res = lookup(buf, 0.5)
    assert res.reason == REASON_NEAREST and res.geotag.fix_age_s == pytest.approx(0.3)
    res = lookup(buf, 0.45, age=0.3)
    assert res.geotag is None and res.reason == REASON_GPS_NO_FIX


def test_gap_exactly_max_fix_gap_interpolates_one_ns_more_does_not():
    buf = FixBuffer()
    buf.add(fix(10.0, north_m=0.0))
    buf.add(fix(10.7, north_m=0.7))
    assert lookup(buf, 10.35, gap=0.7, age=0.1).reason == REASON_INTERPOLATED
    res = buf.lookup(int(10.35 * S), 0.7 - 1e-9, 0.1)
    assert res.geotag is None and res.reason == REASON_STALE_FIX


def test_age_exactly_max_fix_age_is_used_one_ns_more_is_stale():
    buf = FixBuffer()
    buf.add(fix(10.0))
    res = buf.lookup(int(10.3 * S), 1.0, 0.3)
    assert res.reason == REASON_NEAREST and res.geotag.fix_age_s == pytest.approx(0.3)
    res = buf.lookup(int(10.3 * S) + 1, 1.0, 0.3)
    assert res.geotag is None and res.reason == REASON_STALE_FIX
    res = buf.lookup(int(9.7 * S), 1.0, 0.3)  # the nearest fix after the stamp, too
    assert res.reason == REASON_NEAREST
    assert buf.lookup(int(9.7 * S) - 1, 1.0, 0.3).reason == REASON_STALE_FIX


def test_image_stamped_zero_is_not_placed_in_time():
    buf = FixBuffer()
    buf.add(Fix(0, LAT0, LON0))
    res = buf.lookup(0, 1.0, 0.5)
    assert res.geotag is None and res.reason == REASON_NO_IMAGE_STAMP


def test_interpolation_across_the_antimeridian():
    buf = FixBuffer()
    buf.add(Fix(10 * S, -17.0, 179.99999, 5.0, STATUS_GBAS_FIX))
    assert buf.add(Fix(11 * S, -17.0, -179.99999, 5.0, STATUS_GBAS_FIX)) == ADD_ACCEPTED
    for t_s, expected in ((10.25, 179.999995), (10.75, -179.999995)):
        tag = lookup(buf, t_s).geotag
        assert tag.method == REASON_INTERPOLATED
        assert -180.0 <= tag.longitude_deg < 180.0
        assert tag.longitude_deg == pytest.approx(expected, abs=1e-9)
    assert -180.0 <= lookup(buf, 10.5).geotag.longitude_deg < 180.0


def test_nan_altitude_branches():
    buf = FixBuffer()
    buf.add(fix(1.0, alt=math.nan))
    buf.add(fix(1.2, alt=402.0))
    assert lookup(buf, 1.1).geotag.altitude_m == 402.0  # one side NaN: the other side's
    both = FixBuffer()
    both.add(fix(1.0, alt=math.nan))
    both.add(fix(1.2, alt=math.nan))
    assert math.isnan(lookup(both, 1.1).geotag.altitude_m)
    assert math.isnan(lookup(both, 1.0).geotag.altitude_m)  # nearest with NaN altitude
    moving = FixBuffer()
    for i in range(11):
        moving.add(fix(i * 0.2, north_m=i * 0.2, alt=math.nan))
    tag = lookup(moving, 1.0, lever_arm_m=(1.0, 0.0, 0.5)).geotag
    assert tag.lever_arm_applied and math.isnan(tag.altitude_m)


def test_lever_arm_across_the_antimeridian_gives_a_normal_longitude():
    # Driving east at the antimeridian with the camera 2 m ahead: 180.000008 before.
    buf = FixBuffer()
    for i in range(11):
        lat, lon = offset_latlon(0.0, 179.99999, i * 0.2, 0.0)
        buf.add(Fix(int(i * 0.2 * S), lat, lon, 1.0, STATUS_GBAS_FIX))
    tag = lookup(buf, 1.0, lever_arm_m=(2.0, 0.0, 0.0), heading_window_s=1.0).geotag
    assert tag.lever_arm_applied
    assert -180.0 <= tag.longitude_deg < 180.0
    # 1 m driven + 2 m lever arm east of 179.99999 (111319.49 m per degree at the equator)
    assert tag.longitude_deg == pytest.approx(179.99999 + 3.0 / 111319.49 - 360.0, abs=1e-9)


def test_offsets_over_a_pole_stay_valid():
    lat, lon = offset_latlon(89.99999, 10.0, 0.0, 5.0)
    assert -90.0 <= lat <= 90.0 and -180.0 <= lon < 180.0
    lat, lon = offset_latlon(90.0, 0.0, 3.0, -1.0)  # no division by zero at the pole
    assert lat < 90.0 and lon == 0.0
