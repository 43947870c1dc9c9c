"""tools/benchmark.py --mode replay runs end to end and reports every figure it names."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_replay_mode_reports_raw_and_three_replays_per_block(tmp_path):
    out = tmp_path / 'bench.json'
    subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'benchmark.py'), '--mode',
                    'replay', '--blocks', '2', '--bag-frames', '3', '--out', str(out)],
                   check=True, capture_output=True, text=True, cwd=REPO)
    document = json.loads(out.read_text())
    assert document['raw_backend']['images'] == 2 * 2 * 3 * document['tiles_per_frame']
    assert document['raw_one_thread_per_caller']['images_per_s'] > 0
    for name in ('replay', 'replay_one_worker', 'replay_full_size_decode'):
        figures = document[name]
        assert figures['frames'] == 2 * 2 * 3  # two runs a block, three frames each
        assert figures['tiles'] > 0 and len(figures['efficiency_by_block']) == 2
        assert figures['efficiency_median_of_blocks'] > 0
    assert document['replay_one_worker']['inference_workers'] == 1
    assert document['replay_full_size_decode']['reduced_jpeg_decode'] is False
    assert document['replay_efficiency'] == document['replay']['efficiency_median_of_blocks']
