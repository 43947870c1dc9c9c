"""replay/overlap.py: reading, decoding and writing beside inference keep order and errors."""

import threading

import pytest

from leaf_disease_ros.perception.errors import ImageDecodeError
from leaf_disease_ros.replay.overlap import AsyncWriter, Decoder, Prefetch


def test_prefetch_keeps_order_and_reads_ahead_at_most_depth():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i
    stream = Prefetch(source(), depth=4)
    first = next(iter(stream))
    threading.Event().wait(0.2)
    assert first == 0 and len(produced) <= 1 + 4 + 1  # one taken, depth queued, one waiting
    assert list(stream) == list(range(1, 50))


def test_prefetch_raises_the_sources_error_after_its_items():
    def source():
        yield 1
        raise OSError('disk gone')
    stream = Prefetch(source())
    seen = []
    with pytest.raises(OSError, match='disk gone'):
        for item in stream:
            seen.append(item)
    assert seen == [1]


def test_prefetch_close_stops_an_endless_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()
    stream = Prefetch(source(), depth=2)
    assert next(iter(stream)) == 0
    stream.close()
    assert closed.wait(2.0)


def test_decoder_returns_results_and_errors_in_order():
    def decode(value):
        if value < 0:
            raise ImageDecodeError('corrupt')
        return value * 2
    decoder = Decoder(decode)
    futures = [decoder.submit(v) for v in (1, -1, 3)]
    assert futures[0].result() == 2
    with pytest.raises(ImageDecodeError):
        futures[1].result()
    assert futures[2].result() == 6
    decoder.close()


class _Target:

    def __init__(self, fail_at=-1):
        self.calls = []
        self.fail_at = fail_at

    def write_fix(self, *args):
        self._record('fix', args)

    def write_frame(self, *args):
        self._record('frame', args)

    def _record(self, kind, args):
        if len(self.calls) == self.fail_at:
            raise OSError('disk full')
        self.calls.append((kind, args))


def test_async_writer_keeps_call_order():
    target = _Target()
    writer = AsyncWriter(target, depth=3)
    for i in range(20):
        (writer.write_fix if i % 3 else writer.write_frame)(i)
    writer.flush()
    assert [args[0] for _, args in target.calls] == list(range(20))
    assert target.calls[0][0] == 'frame' and target.calls[1][0] == 'fix'


def test_async_writer_raises_the_threads_error():
    writer = AsyncWriter(_Target(fail_at=2))
    for i in range(5):
        try:
            writer.write_fix(i)
        except OSError:
            break
    with pytest.raises(OSError, match='disk full'):
        writer.flush()
