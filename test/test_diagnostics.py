"""Node statistics and status levels, with known answers."""

import math

import pytest

from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_REJECTED_JUMP, ADD_REJECTED_LATITUDE,
                                         ADD_REJECTED_NAN, ADD_REJECTED_NO_FIX)
from leaf_disease_ros.perception.positions import Fix, STATUS_FIX
from leaf_disease_ros.ros.diagnostics import (CLOCK_MISMATCH_S, DetectorStats, DetectorThresholds,
                                              ERROR, GpsStats, OK, percentile, SlidingWindow,
                                              STALE, status_name, STATUS_UNKNOWN, WARN,
                                              worst_level)

S = 1_000_000_000
THRESHOLDS = DetectorThresholds(no_image_warn_s=5.0, latency_budget_ms=500.0)
TOPIC = '/camera/image_raw'


def report(stats, now_s, enabled=True, dropped=0, thresholds=THRESHOLDS):
    """Return the detector report of ``stats`` at ``now_s``."""
    return stats.report(now_s, name='/detector_node: detector', hardware_id='tiny@abc',
                        enabled=enabled, image_topic=TOPIC, backend='onnxruntime',
                        model_id='tiny@abc', dropped=dropped, thresholds=thresholds)


def run_frames(stats, times_s, latency_ms=100.0, processing_ms=40.0):
    """Feed images that are all processed."""
    for t in times_s:
        stats.image_received(t)
        stats.frame_processed(t, latency_ms, processing_ms)


def test_percentile_known_answers():
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_worst_level_orders_error_over_warn_over_stale_over_ok():
    assert worst_level([OK, WARN, STALE]) == WARN
    assert worst_level([STALE, OK]) == STALE
    assert worst_level([WARN, ERROR]) == ERROR
    assert worst_level([]) == OK


def test_sliding_window_summary_and_pruning():
    window = SlidingWindow(start_s=0.0, window_s=10.0)
    for t, value in zip((1, 2, 3, 4, 5), (10, 20, 30, 40, 50)):
        window.add(t, value)
    summary = window.summary(5.0)
    assert summary.count == 5
    assert summary.rate_hz == pytest.approx(1.0)  # 5 samples in the 5 s since start
    assert summary.p50 == 30.0 and summary.maximum == 50.0
    assert summary.p99 == pytest.approx(49.6)
    later = window.summary(12.5)  # samples before 2.5 s have left the window
    assert later.count == 3
    assert later.rate_hz == pytest.approx(0.3)
    assert window.count(100.0) == 0
    assert math.isnan(window.summary(100.0).p50)


def test_running_detector_is_ok_with_fps_and_latency():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [0.1 * i for i in range(1, 11)])
    rep = report(stats, 1.0, dropped=3)
    values = rep.value_dict()
    assert rep.level == OK
    assert rep.message == '10.0 fps, latency p99 100 ms'
    assert values['fps'] == '10.00'
    assert values['latency_p50_ms'] == '100.0'
    assert values['processing_p50_ms'] == '40.0'
    assert values['frames_received'] == values['frames_processed'] == '10'
    assert values['frames_dropped'] == '3'
    assert values['backend'] == 'onnxruntime' and values['model_id'] == 'tiny@abc'
    assert rep.hardware_id == 'tiny@abc'


def test_waiting_then_no_images_warns_with_the_topic():
    stats = DetectorStats(start_s=0.0)
    assert report(stats, 1.0).level == OK
    assert 'waiting for images' in report(stats, 1.0).message
    rep = report(stats, 6.0)
    assert rep.level == WARN
    assert TOPIC in rep.message and 'remapping' in rep.message


def test_images_that_stop_warn():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [1.0])
    rep = report(stats, 8.0)
    assert rep.level == WARN
    assert rep.message == f'no image on {TOPIC} for 7.0 s'


def test_latency_over_budget_warns():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [0.5, 1.0], latency_ms=800.0)
    rep = report(stats, 1.0)
    assert rep.level == WARN
    assert rep.message == 'latency p99 800 ms over budget 500 ms'
    relaxed = DetectorThresholds(no_image_warn_s=5.0, latency_budget_ms=1000.0)
    assert report(stats, 1.0, thresholds=relaxed).level == OK


def test_a_clock_mismatch_is_named_instead_of_a_latency_budget():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [0.5, 1.0], latency_ms=(CLOCK_MISMATCH_S + 3570.0) * 1e3)
    rep = report(stats, 1.0)
    assert rep.level == WARN
    assert 'image stamps are 3600 s behind the node clock' in rep.message
    assert 'use_sim_time' in rep.message
    assert 'budget' not in rep.message


def test_every_frame_failing_is_an_error_and_some_failing_a_warning():
    stats = DetectorStats(start_s=0.0)
    for t in (0.2, 0.4):
        stats.image_received(t)
        stats.frame_failed(t, 'onnxruntime failed on a batch of 4')
    rep = report(stats, 1.0)
    assert rep.level == ERROR
    assert 'every frame' in rep.message and 'onnxruntime failed' in rep.message
    run_frames(stats, [0.1 * i for i in range(5, 15)])
    rep = report(stats, 1.5)
    assert rep.level == WARN
    assert rep.message.startswith('2 of 12 frames failed in the last 10 s')
    assert rep.value_dict()['frames_failed'] == '2'


def test_unsupported_encodings_are_counted_per_encoding_and_reported():
    stats = DetectorStats(start_s=0.0)
    for t in (0.1, 0.2, 0.3):
        stats.image_received(t)
        stats.unsupported_encoding(t, '16UC1', "cannot convert an image in encoding '16UC1'")
    rep = report(stats, 1.0)
    assert rep.level == ERROR
    assert 'encoding 16UC1' in rep.message
    values = rep.value_dict()
    assert values['unsupported_encodings'] == '16UC1: 3'
    assert values['frames_unsupported_encoding'] == '3'


def test_paused_is_ok_and_says_so_whatever_else():
    stats = DetectorStats(start_s=0.0)
    stats.image_received(0.5)
    stats.frame_ignored()
    rep = report(stats, 60.0, enabled=False)
    assert rep.level == OK
    assert rep.message == 'paused by ~/enable: frames are ignored'
    values = rep.value_dict()
    assert values['enabled'] == 'false'
    assert values['frames_ignored_paused'] == '1'


def test_old_samples_leave_the_window():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [1.0], latency_ms=900.0)
    stats.image_received(19.0)
    rep = report(stats, 20.0)
    assert rep.level == OK  # the slow frame is 19 s old, outside the 10 s window
    assert rep.value_dict()['fps'] == '0.00'
    assert rep.value_dict()['latency_p99_ms'] == 'n/a'


def gps_report(stats, now_s, now_ns, newest, warn_s=2.0):
    """Return the GPS report of ``stats``."""
    return stats.report(now_s, now_ns, newest, name='/detector_node: gps', hardware_id='/fix',
                        fix_topic='/fix', no_fix_warn_s=warn_s, buffer_len=7)


def fix(stamp_ns, status=STATUS_FIX):
    """Return a fix at ``stamp_ns``."""
    return Fix(stamp_ns, 46.0, 7.0, 400.0, status)


def test_gps_waits_then_warns_when_no_fix_arrives():
    stats = GpsStats(start_s=0.0)
    rep = gps_report(stats, 1.0, 1 * S, None)
    assert rep.level == OK and 'waiting for the first fix on /fix' in rep.message
    rep = gps_report(stats, 3.0, 3 * S, None)
    assert rep.level == WARN and rep.message.startswith('no fix received on /fix')


def test_gps_fresh_fix_is_ok_with_its_age():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    rep = gps_report(stats, 10.1, 100 * S, fix(100 * S - S // 5))
    assert rep.level == OK
    assert rep.message == 'FIX fix, 0.20 s old'
    values = rep.value_dict()
    assert values['fix_age_s'] == '0.200'
    assert values['fixes_received'] == values['fixes_accepted'] == '1'
    assert values['buffer_fixes'] == '7'


def test_gps_stale_fix_warns():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    rep = gps_report(stats, 10.5, 105 * S, fix(100 * S))
    assert rep.level == WARN
    assert rep.message == 'newest usable fix is 5.0 s old (no_fix_warn_s 2)'


def test_gps_no_fix_and_nan_are_reported():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    stats.fix_received(10.2, ADD_REJECTED_NO_FIX)
    rep = gps_report(stats, 10.3, 100 * S, fix(100 * S - S // 10))
    assert rep.level == WARN and 'NO_FIX' in rep.message
    stats.fix_received(10.4, ADD_REJECTED_NAN)
    rep = gps_report(stats, 10.5, 100 * S, fix(100 * S - S // 10))
    assert rep.level == WARN and 'NaN' in rep.message
    values = rep.value_dict()
    assert (values['fixes_rejected_no_fix'], values['fixes_rejected_nan']) == ('1', '1')


def test_gps_glitches_and_polar_positions_are_reported():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    stats.fix_received(10.2, ADD_REJECTED_JUMP)
    rep = gps_report(stats, 10.3, 100 * S, fix(100 * S - S // 10))
    assert rep.level == WARN and 'rejected as a glitch' in rep.message
    stats.fix_received(10.4, ADD_REJECTED_LATITUDE)
    rep = gps_report(stats, 10.5, 100 * S, fix(100 * S - S // 10))
    assert rep.level == WARN and 'beyond +-90 degrees' in rep.message
    values = rep.value_dict()
    assert (values['fixes_rejected_jump'], values['fixes_rejected_latitude']) == ('1', '1')
    assert values['utm_position'] == 'yes'
    stats.fix_received(10.6, ADD_ACCEPTED)
    polar = Fix(100 * S, 88.0, 7.0, 0.0, STATUS_FIX)
    rep = gps_report(stats, 10.7, 100 * S + S // 10, polar)
    assert rep.level == WARN and 'beyond UTM' in rep.message
    assert rep.value_dict()['utm_position'] == 'none: beyond UTM'


def test_gps_silence_warns():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    rep = gps_report(stats, 13.0, 100 * S, fix(100 * S - S // 10))
    assert rep.level == WARN
    assert rep.message == 'no fix message on /fix for 3.0 s'


def test_gps_clock_mismatch_is_named():
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_ACCEPTED)
    rep = gps_report(stats, 10.1, 2000 * S, fix(1000 * S))
    assert rep.level == WARN
    assert rep.message.startswith('fix stamps are 1000 s behind the node clock')
    rep = gps_report(stats, 10.1, 1000 * S, fix(2000 * S))
    assert 'ahead of the node clock' in rep.message


def test_gps_buffer_clears_are_counted():
    stats = GpsStats(start_s=0.0)
    stats.buffer_cleared('fix stamps jumped back by 60.0 s')
    values = gps_report(stats, 1.0, S, None).value_dict()
    assert values['buffer_clears'] == '1'
    assert values['last_clear_reason'] == 'fix stamps jumped back by 60.0 s'


def test_images_arriving_without_any_outcome_warn_that_inference_is_stuck():
    stats = DetectorStats(start_s=0.0)
    run_frames(stats, [1.0])
    for t in (2.0, 4.0, 6.0, 8.0):
        stats.image_received(t)  # queued, never processed nor failed
    rep = report(stats, 8.5)
    assert rep.level == WARN
    assert rep.message.startswith('images arrive but no frame finished for 6.5 s')
    stats.frame_processed(8.6, 100.0, 40.0)
    assert report(stats, 8.7).level == OK


def test_gps_status_unknown_is_not_reported_as_no_fix():
    # Jazzy: NavSatStatus.STATUS_UNKNOWN = -2 is the field's default ("not yet set")
    stats = GpsStats(start_s=0.0)
    stats.fix_received(10.0, ADD_REJECTED_NO_FIX, STATUS_UNKNOWN)
    rep = gps_report(stats, 10.1, 100 * S, None)
    assert rep.level == WARN and 'STATUS_UNKNOWN' in rep.message
    assert 'NO_FIX' not in rep.message
    stats.fix_received(10.2, ADD_REJECTED_NO_FIX, -1)
    assert 'receiver reports NO_FIX' in gps_report(stats, 10.3, 100 * S, None).message
    stats.fix_received(10.4, ADD_REJECTED_NO_FIX, -7)
    assert 'status -7' in gps_report(stats, 10.5, 100 * S, None).message
    assert status_name(STATUS_UNKNOWN) == 'UNKNOWN' and status_name(2) == 'GBAS_FIX'
