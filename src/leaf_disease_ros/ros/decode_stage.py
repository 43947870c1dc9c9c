"""
The node's decode stage: convert the newest image while the worker infers the previous one.

Without it the worker did, per frame, decode (cv_bridge or ``cv2.imdecode``, CPU) then
inference (GPU on a Jetson) in series, so the accelerator waited on the CPU for every
decode. :class:`DecodeStage` runs the decoding on its own thread, one stage deep:

- the image callback :meth:`~DecodeStage.put` s each message into a one-slot
  :class:`~leaf_disease_ros.ros.frame_mailbox.LatestMailbox` (the newest wins; a
  replaced message is counted in :attr:`~DecodeStage.dropped`, as before);
- the decode thread takes the newest message, decodes it and leaves the result in a
  one-slot hand-off; it decodes the next message only once the worker has taken that
  result (:meth:`~DecodeStage.take`), so it is never more than one frame ahead and
  never decodes a frame nobody will infer. Messages that arrive while the decoded
  frame waits replace each other in the mailbox and are counted as dropped;
- a decode error travels with its message (:attr:`Decoded.error`) and is raised by
  the worker in frame order, so a bad frame is counted where it always was;
- :meth:`~DecodeStage.clear` (pause, deactivate) discards the waiting message, the
  decoded frame and the one being decoded (its result is thrown away on arrival:
  nothing taken before a clear is handed out after it);
- :meth:`~DecodeStage.close` stops the thread.

OpenCV's decoders and cv_bridge's conversion release the GIL, so the decode runs
beside ONNX Runtime or TensorRT on another core. Frames reach the worker in arrival
order and each keeps its own message (header, stamp).
"""

import threading
from typing import Callable, cast, Generic, Optional, TypeVar

from leaf_disease_ros.ros.frame_mailbox import LatestMailbox

M = TypeVar('M')
F = TypeVar('F')

POLL_S = 0.2
JOIN_S = 10.0


class Decoded(Generic[M, F]):
    """A message with its decoded frame, or with the error its decoding raised."""

    __slots__ = ('message', 'frame', 'error')

    def __init__(self, message: M, frame: Optional[F], error: Optional[BaseException]) -> None:
        self.message = message
        self.frame = frame
        self.error = error

    def result(self) -> F:
        """Return the frame, or raise the decoding's error (with its traceback)."""
        if self.error is not None:
            raise self.error
        return cast(F, self.frame)


class DecodeStage(Generic[M, F]):
    """Decode the newest message on a thread, one frame ahead of the worker."""

    def __init__(self, decode: Callable[[M], F], name: str = 'leaf_detector_decode') -> None:
        """
        Prepare the stage; :meth:`start` starts the decode thread.

        :param decode: message -> frame; called on the decode thread. Whatever it raises
            is handed to the worker with the message (:meth:`Decoded.result`).
        :param name: the thread's name.
        """
        self._decode = decode
        self._mailbox: LatestMailbox[M] = LatestMailbox()
        self._condition = threading.Condition()
        self._ready: Optional[Decoded[M, F]] = None
        self._epoch = 0  # raised by clear(): a decode started before it is discarded
        self._closed = False
        self._discarded = 0
        self._decoded = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the decode thread (once)."""
        self._thread.start()

    # --- the image callback --------------------------------------------------------

    def put(self, message: M) -> bool:
        """Queue ``message`` as the newest; return True when it replaced a waiting one."""
        return self._mailbox.put(message)

    # --- the worker ----------------------------------------------------------------

    def take(self, timeout_s: float) -> Optional[Decoded[M, F]]:
        """
        Return the next decoded frame, waiting up to ``timeout_s``.

        Taking it lets the decode thread start on the newest message.

        :returns: The decoded frame, or None on timeout or once closed.
        """
        with self._condition:
            if self._ready is None and not self._closed:
                self._condition.wait_for(lambda: self._ready is not None or self._closed,
                                         timeout_s)
            decoded, self._ready = self._ready, None
            self._condition.notify_all()
            return decoded

    # --- control -------------------------------------------------------------------

    def clear(self) -> None:
        """Discard the waiting message, the decoded frame and the frame being decoded."""
        with self._condition:
            self._epoch += 1
            if self._mailbox.clear():
                self._discarded += 1
            if self._ready is not None:
                self._ready = None
                self._discarded += 1
            self._condition.notify_all()

    def close(self, join_s: float = JOIN_S) -> None:
        """Refuse further messages, discard what waits, stop the thread (safe twice)."""
        with self._condition:
            self._closed = True
            self._epoch += 1
            self._ready = None
            self._condition.notify_all()
        self._mailbox.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(join_s)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._condition:
            return self._closed

    @property
    def alive(self) -> bool:
        """Whether the decode thread runs."""
        return self._thread.is_alive()

    @property
    def dropped(self) -> int:
        """Messages replaced by a newer one before they were decoded."""
        return self._mailbox.dropped

    @property
    def discarded(self) -> int:
        """Messages and decoded frames thrown away by :meth:`clear`."""
        with self._condition:
            return self._discarded

    @property
    def decoded(self) -> int:
        """Count the messages the decode thread has converted (or failed to)."""
        with self._condition:
            return self._decoded

    # --- the decode thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:  # one stage deep: wait until the worker took the last one
                self._condition.wait_for(lambda: self._ready is None or self._closed)
                if self._closed:
                    return
            if not self._mailbox.wait(POLL_S):
                if self._mailbox.closed:
                    return
                continue
            with self._condition:  # take and epoch together: clear() cannot fall between
                message = self._mailbox.take(0.0)
                epoch = self._epoch
            if message is None:
                continue  # cleared meanwhile
            try:
                decoded: Decoded[M, F] = Decoded(message, self._decode(message), None)
            except Exception as exc:  # the worker raises it, in frame order
                decoded = Decoded(message, None, exc)
            with self._condition:
                self._decoded += 1
                if self._closed:
                    return
                if epoch != self._epoch:  # cleared while it was decoded
                    self._discarded += 1
                    continue
                self._ready = decoded
                self._condition.notify_all()
