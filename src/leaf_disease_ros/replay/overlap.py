"""
Keeping a replay's model busy: bag reading, image decoding and the output bag off its path.

A replay did four things in series per frame: read and deserialise the bag's
messages, decode the image, run the pipeline (inference), write the output bag. Only
inference needs to be on the replay's thread; the others run beside it here, each
on one thread with a bounded queue, so memory stays bounded and the order of every
stream is kept:

- :class:`Prefetch`: the bag's message iterator runs on a thread, at most ``depth``
  messages ahead (``rosbags`` decompresses chunks there);
- :class:`Decoder`: an image is decoded *and prepared* (colour check, tiling, gating,
  preprocessing: :meth:`~leaf_disease_ros.perception.pipeline.Detector.prepare`) on a
  thread as soon as its message is read (frames wait in the runner's queue for their
  fixes anyway, so this is done before they are processed); its result or error
  comes back in order. The replay's own thread is left with inference, postprocessing
  and the bookkeeping;
- :class:`AsyncWriter`: output-bag writes go through one thread in call order; an
  error there is raised by the next write or by :meth:`AsyncWriter.flush`.

OpenCV's ``imdecode``, ONNX Runtime's ``run`` and rosbags' decompression release the
GIL, so on a multi-core machine these overlap with inference.
"""

from concurrent.futures import Future, ThreadPoolExecutor
import queue
import threading
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar('T')
_DONE = object()
_POLL_S = 0.1


class Prefetch:
    """Iterate ``source`` on a thread, at most ``depth`` items ahead; errors re-raised."""

    def __init__(self, source: Iterator[Any], depth: int = 64) -> None:
        self._queue: 'queue.Queue[Any]' = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._source = source
        self._thread = threading.Thread(target=self._run, name='replay-read', daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
        except BaseException as exc:  # noqa: B902 - handed to the consumer's thread
            self._error = exc
        finally:
            close = getattr(self._source, 'close', None)
            if close is not None and self._stop.is_set():
                try:
                    close()
                except (RuntimeError, ValueError):
                    pass  # the generator is still running: it stops at its next put
            self._put(_DONE)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                self._thread.join()
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self) -> None:
        """Stop reading (the thread ends at its next message) and wait for it."""
        self._stop.set()
        self._thread.join()


class Decoder(Generic[T]):
    """Run ``decode`` on one thread in submission order; each future holds its result or error."""

    def __init__(self, decode: Callable[..., T]) -> None:
        self._decode = decode
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='replay-decode')

    def submit(self, *args: Any) -> 'Future[T]':
        """Start ``decode(*args)``; the future holds what it returns, or what it raised."""
        return self._pool.submit(self._decode, *args)

    def close(self) -> None:
        """Drop what is not started; wait for the running decode."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class AsyncWriter:
    """Call ``write_fix`` / ``write_frame`` of an output bag on one thread, in order."""

    def __init__(self, target: Any, depth: int = 256) -> None:
        self.target = target
        self._queue: 'queue.Queue[Any]' = queue.Queue(maxsize=max(1, depth))
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name='replay-write', daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain: the error is raised on the replay's thread
            name, args = item
            try:
                getattr(self.target, name)(*args)
            except BaseException as exc:  # noqa: B902 - handed to the replay's thread
                self._error = exc

    def _call(self, name: str, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((name, args))

    def write_fix(self, *args: Any) -> None:
        """Queue :meth:`OutputBag.write_fix`."""
        self._call('write_fix', *args)

    def write_frame(self, *args: Any) -> None:
        """Queue :meth:`OutputBag.write_frame`."""
        self._call('write_frame', *args)

    def flush(self) -> None:
        """Wait until every queued write is done; raise the first error of the thread."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error
