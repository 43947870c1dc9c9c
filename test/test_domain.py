"""
Out-of-domain diagnostics (ros/diagnostics.py): shares over a window of tiles, the WARN rule.

The window and the rule are unit-tested on hand-made frame results; the replay test
runs a bag whose second half the scripted backend cannot classify (grey tiles fall to
unknown), so the report must show the node's warning at the right frames.
"""

import os
import re

import pytest

from bag_builder import Frame, NS, write_bag
from conftest import REPO_DIR
from leaf_disease_ros.perception.config import PARAMETERS_BY_NAME, validate_parameters
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import GeotagResult, REASON_NO_FIX_RECEIVED
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.ros.diagnostics import (ADAPTATION_FIX, domain_report, DomainRule,
                                              DomainShares, DomainWindow, frame_counts,
                                              NOT_ADAPTED, OK, out_of_domain, WARN)
from leaf_disease_ros.ros.params import live_effects, READ_AT_EACH_REPORT
from scripted_backend import colour_card, ColourBackend, tiles


def result(labels, gated=0, findings=()):
    """Return a frame with one tile per label (``unknown`` rejected), ``gated`` skipped."""
    detections = tuple(
        Detection((0, 0, 1, 1), label, -1 if label == 'unknown' else 0, 0.9,
                  ((label, 0.9),), label == 'unknown', i in findings, i in findings, 1.0)
        for i, label in enumerate(labels))
    return FrameResult(0, 1, 1, detections, len(labels) + gated, gated,
                       GeotagResult(None, REASON_NO_FIX_RECEIVED), {})


def rule(tiles_needed=10, fraction=0.2, far_fraction=0.2):
    """Return a domain rule judging from ``tiles_needed`` tiles."""
    return DomainRule(tiles_needed, tiles_needed, fraction, far_fraction)


def report(window, tiles_needed=10, fraction=0.2):
    """Return the domain status of ``window``."""
    return domain_report(window.shares(), name='/detector_node: domain', hardware_id='m@1',
                         rule=rule(tiles_needed, fraction))


def test_frame_counts():
    frame = result(['healthy', 'unknown', 'sky', 'esca', 'unknown'], gated=3, findings=(3,))
    assert frame_counts(frame, ('sky', 'soil')) == (8, 5, 2, 1, 3, 1, 0)


def test_the_window_keeps_whole_recent_frames_holding_the_tiles():
    window = DomainWindow(10, background_labels=('sky',))
    for _ in range(3):
        window.add_frame(result(['healthy'] * 4, gated=1))
    shares = window.shares()
    assert (shares.frames, shares.classified, shares.tiles) == (3, 12, 15)
    # a frame of 6: the two oldest leave, the newest two frames still hold >= 10 tiles
    window.add_frame(result(['unknown'] * 4 + ['sky'] * 2, gated=4))
    shares = window.shares()
    counts = (shares.frames, shares.classified, shares.unknown, shares.background)
    assert counts == (2, 10, 4, 2)
    assert shares.unknown_share == pytest.approx(4 / 10)
    assert shares.background_share == pytest.approx(2 / 10)
    assert shares.gated_out_share == pytest.approx(5 / 15)
    assert window.full()
    window.clear()
    assert window.shares() == DomainShares(0, 0, 0, 0, 0, 0, 0, 0)


def test_a_stream_of_gated_out_frames_stays_bounded():
    window = DomainWindow(10)
    for _ in range(1000):
        window.add_frame(result([], gated=15))
    shares = window.shares()
    assert shares.frames == 10 and shares.gated_out_share == 1.0 and shares.unknown_share == 0.0
    assert not window.full()


def test_ok_while_collecting_then_ok_in_domain():
    window = DomainWindow(10)
    window.add_frame(result(['unknown'] * 5))
    status = report(window)
    assert status.level == OK
    assert status.message.startswith('collecting tiles for the domain check: 5 of 10')
    for _ in range(5):
        window.add_frame(result(['healthy'] * 5))
    status = report(window)
    assert status.level == OK
    assert status.message.startswith('in domain: 0 % unknown, 0 % far from the domain '
                                     'reference, 0 % background')
    values = status.value_dict()
    assert values['unknown_share'] == '0.000' and values['window_tiles'] == '10'
    assert set(values) >= {'tiles_in_window', 'frames_in_window', 'background_share',
                           'gated_out_share', 'finding_share', 'unknown_warn_fraction'}


def test_warn_out_of_domain_names_the_adaptation_workflow():
    window = DomainWindow(10)
    for _ in range(3):
        window.add_frame(result(['unknown', 'unknown', 'healthy', 'healthy', 'healthy']))
    status = report(window, fraction=0.4)
    assert status.level == WARN
    assert status.message.startswith(
        NOT_ADAPTED + ': of the last 10 classified tiles 40 % fell to unknown '
        '(domain_unknown_warn_fraction 0.4); findings are held back')
    assert status.message.endswith(ADAPTATION_FIX)
    assert 'leaf-disease-site BAG --out SITE' in status.message
    assert 'site_path:=SITE' in status.message
    assert 'docs/adaptation.md' in status.message
    assert report(window, fraction=0.41).level == OK  # just below the fraction
    assert out_of_domain(window.shares(), rule(10, 0.4))
    assert not out_of_domain(window.shares(), rule(11, 0.4))  # not enough tiles yet


def test_the_fix_names_an_installed_command_and_an_existing_page():
    with open(os.path.join(REPO_DIR, 'setup.py'), encoding='utf-8') as stream:
        setup = stream.read()
    for command in re.findall(r'leaf-disease-[a-z-]+', ADAPTATION_FIX):
        assert f"'{command} = " in setup, command
    assert os.path.isfile(os.path.join(REPO_DIR, 'docs', 'adaptation.md'))


def test_the_parameters():
    values = validate_parameters({})
    assert values['domain_window_tiles'] == 300
    assert values['domain_unknown_warn_fraction'] == 0.2
    assert PARAMETERS_BY_NAME['domain_window_tiles'].read_only
    # the fraction changes live: read at every report
    assert 'domain_unknown_warn_fraction' in READ_AT_EACH_REPORT
    assert live_effects({'domain_unknown_warn_fraction': 0.5}) == frozenset()


def test_the_replay_reports_the_shares_and_when_the_node_would_warn(tmp_path):
    # 30 frames of 2 known tiles, then 30 frames the model cannot classify
    frames = [Frame(int(0.25 * i * NS), tiles(['healthy', 'esca'])) for i in range(30)]
    frames += [Frame(int(0.25 * i * NS), tiles(['grey', 'grey'])) for i in range(30, 60)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames)
    out = str(tmp_path / 'report')
    params = {'min_vegetation_fraction': 0.0, 'domain_window_tiles': 20,
              'domain_min_tiles': 20}
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, parameters=params,
                                     write_bag=False),
                       backend=ColourBackend(colour_card(str(tmp_path))))
    metrics = write_report(state, out)
    assert metrics['tiles']['unknown'] == 60 and metrics['tiles']['unknown_rate'] == 0.5
    domain = metrics['domain']
    assert domain['window_tiles'] == 20 and domain['unknown_warn_fraction'] == 0.2
    assert domain['frames_judged'] == 51  # from the 10th frame on (20 tiles)
    # 4 unknown tiles of 20 (the 32nd frame) reach 0.2: the 32nd to the 60th frame warn
    assert domain['frames_warn'] == 29
    assert domain['unknown_share_peak'] == 1.0
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        text = stream.read()
    assert '## Out-of-domain check' in text
    assert 'would have warned after 29 of 51 frames' in text
    assert 'leaf-disease-site BAG --out SITE' in text


def test_far_tiles_warn_without_any_unknown_and_findings_never_count():
    window = DomainWindow(10)
    far = tuple(Detection((0, 0, 1, 1), 'esca', 1, 0.99, (('esca', 0.99),), False, True, True,
                          1.0, out_of_domain=True) for _ in range(5))
    window.add_frame(FrameResult(0, 1, 1, far, 5, 0, GeotagResult(None, REASON_NO_FIX_RECEIVED),
                                 {}))
    window.add_frame(result(['healthy'] * 5))
    shares = window.shares()
    assert shares.unknown_share == 0.0 and shares.far_share == 0.5
    status = domain_report(shares, name='d', hardware_id='m', rule=rule(10, 0.2, 0.6))
    assert status.level == OK  # 50 % far, WARN from 60 %; 50 % findings never judged
    status = domain_report(shares, name='d', hardware_id='m', rule=rule(10, 0.2, 0.5))
    assert status.level == WARN and status.message.startswith(NOT_ADAPTED)
    assert status.value_dict()['findings_held'] == 'yes'


def test_the_replay_holds_findings_back_while_out_of_domain(tmp_path):
    # 12 in-domain frames (a finding each), then 20 frames the model mostly cannot classify
    frames = [Frame(int(0.25 * i * NS), tiles(['healthy', 'black_rot'])) for i in range(12)]
    frames += [Frame(int(0.25 * i * NS), tiles(['grey', 'grey', 'black_rot']))
               for i in range(12, 32)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames)
    out = str(tmp_path / 'report')
    params = {'min_vegetation_fraction': 0.0, 'domain_window_tiles': 10, 'domain_min_tiles': 4}
    backend = ColourBackend(colour_card(str(tmp_path)))
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, parameters=params), backend)
    metrics = write_report(state, out)
    findings = metrics['findings']
    assert findings['sightings'] == 32
    held = findings['held']
    # frames 1-2 collect (2 and 4 tiles: the 2nd judges), frames 15-32 warn: 1 + 18 held
    assert held['while_collecting'] == 1 and held['while_out_of_domain'] >= 17
    assert held['count'] == held['while_collecting'] + held['while_out_of_domain']
    assert findings['confirmed'] + held['count'] <= 32
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        text = stream.read()
    assert '## Findings held back' in text and NOT_ADAPTED in text
    with open(os.path.join(out, 'report.html'), encoding='utf-8') as stream:
        assert 'id="held"' in stream.read()
    # without the hold every finding is mapped
    free = run_replay(ReplayOptions(bag_path=bag, out_dir=str(tmp_path / 'free'),
                                    parameters=dict(params, hold_findings_out_of_domain=False),
                                    write_bag=False), backend)
    assert free.findings_held == 0
    assert free.findings_confirmed >= state.findings_confirmed + held['while_out_of_domain']
