"""
Reading rosbag2 recordings for the replay: what a bag holds, and its message stream.

:class:`BagReader` opens a recording with the ``rosbags`` library (rosbag2 folders in
sqlite3 or MCAP storage, or a single ``.mcap`` / ``.db3`` file) and streams the raw
CDR messages of chosen topics in log-time order, one at a time (memory does not grow
with the bag's length). Every failure is a :class:`~leaf_disease_ros.perception.errors.BagError`
whose message says what is wrong and what to do.

A recording can end early: the recorder was killed, the disk filled up, a file was
copied half-way. Then:

- an error *while* reading (a cut or corrupt chunk, a damaged database page) ends
  the stream; :attr:`BagReader.truncated_reason` says why, and what was read before
  stays valid;
- an MCAP file whose end (footer and index) is missing cannot be opened by
  ``rosbags``; it is read front to back with the reference ``mcap`` library when it
  is installed (``pip install mcap``), up to the last complete chunk, and marked
  truncated the same way. Without that library the error says how to recover the file.
"""

from dataclasses import dataclass
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

from leaf_disease_ros.perception.errors import BagError

STORAGE_EXTENSIONS = {'.mcap': 'mcap', '.db3': 'sqlite3'}


@dataclass(frozen=True)
class TopicInfo:
    """A topic of the bag: name, message type (``pkg/msg/Type``) and message count."""

    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One raw message: topic, type, log (receive) time in ns and its CDR bytes."""

    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes


def _reader_errors() -> Tuple[Type[BaseException], ...]:
    from rosbags.rosbag2 import ReaderError

    errors: List[type] = [ReaderError, OSError, EOFError, ValueError]
    try:
        import apsw  # rosbags' sqlite3 driver
        errors.append(apsw.Error)
    except ImportError:  # pragma: no cover - apsw comes with rosbags
        pass
    return tuple(errors)


def _mcap_errors() -> Tuple[Type[BaseException], ...]:
    try:
        from mcap.exceptions import McapError
    except ImportError:
        return ()
    return (McapError,)


def describe_topics(topics: Dict[str, TopicInfo]) -> str:
    """Return ``'/a (pkg/msg/A, 10 msgs), ...'`` for error messages."""
    if not topics:
        return 'none'
    return ', '.join(f'{t.name} ({t.msgtype}, {t.count} msgs)' for t in topics.values())


def _storage_path(path: str) -> Tuple[str, str]:
    """Return ``(path to open, note)``; raise BagError when it is not a recording."""
    if not os.path.exists(path):
        raise BagError(f'{path} does not exist; give a rosbag2 folder (with metadata.yaml) '
                       'or a .mcap / .db3 file')
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, 'metadata.yaml')):
            return path, ''
        stores = sorted(name for name in os.listdir(path)
                        if os.path.splitext(name)[1] in STORAGE_EXTENSIONS)
        if len(stores) == 1:
            return (os.path.join(path, stores[0]),
                    f'{path} has no metadata.yaml (recording not closed?); reading '
                    f'{stores[0]} directly')
        if stores:
            raise BagError(f'{path} has no metadata.yaml and several storage files '
                           f'({", ".join(stores)}); rebuild the metadata with '
                           f'`ros2 bag reindex {path}` or give one file')
        raise BagError(f'{path} is not a rosbag2 recording: no metadata.yaml and no '
                       '.mcap / .db3 file in it')
    if os.path.splitext(path)[1] not in STORAGE_EXTENSIONS:
        raise BagError(f'{path} is not a rosbag2 recording; give a rosbag2 folder (with '
                       'metadata.yaml) or a .mcap / .db3 file')
    return path, ''


class BagReader:
    """
    An open recording: :attr:`topics`, :meth:`messages`, :attr:`truncated_reason`.

    Use as a context manager. ``storage`` is ``'mcap'`` or ``'sqlite3'``.

    :raises BagError: the path is not a readable rosbag2 recording.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.notes: List[str] = []
        self.truncated_reason = ''
        self.storage = ''
        self._reader: Any = None
        self._mcap_file: Optional[str] = None  # set when read with the mcap fallback
        self.topics: Dict[str, TopicInfo] = {}
        #: topics recorded with more than one message type -> their types, in bag order
        self.mixed_types: Dict[str, List[str]] = {}
        open_path, note = _storage_path(path)
        if note:
            self.notes.append(note)
        self._open(open_path)

    def _open(self, open_path: str) -> None:
        try:
            from rosbags.rosbag2 import Reader
        except ImportError as exc:  # pragma: no cover - rosbags is the replay extra
            raise BagError("reading bags needs rosbags: pip install '.[replay]'") from exc
        try:
            reader = Reader(open_path)
            reader.open()
        except _reader_errors() as exc:
            mcap_file = self._single_mcap_file(open_path)
            if mcap_file is not None and self._looks_truncated(exc):
                self._open_truncated_mcap(mcap_file, exc)
                return
            raise BagError(f'{self.path}: cannot read the recording: {exc}'
                           + self._hint(open_path, exc)) from exc
        self._reader = reader
        self.storage = self._storage_name(open_path)
        for connection in reader.connections:
            self._add_topic(connection.topic, connection.msgtype,
                            int(getattr(connection, 'msgcount', 0) or 0))

    def _add_topic(self, topic: str, msgtype: str, count: int) -> None:
        """Count a connection (channel) of ``topic``; note a second message type."""
        known = self.topics.get(topic)
        if known is None:
            self.topics[topic] = TopicInfo(topic, msgtype, count)
            return
        self.topics[topic] = TopicInfo(topic, known.msgtype, known.count + count)
        if msgtype != known.msgtype:
            types = self.mixed_types.setdefault(topic, [known.msgtype])
            if msgtype not in types:
                types.append(msgtype)

    @staticmethod
    def _storage_name(open_path: str) -> str:
        if os.path.isdir(open_path):
            names = os.listdir(open_path)
            return 'mcap' if any(n.endswith('.mcap') for n in names) else 'sqlite3'
        return STORAGE_EXTENSIONS.get(os.path.splitext(open_path)[1], '')

    @staticmethod
    def _single_mcap_file(open_path: str) -> Optional[str]:
        if os.path.isfile(open_path):
            return open_path if open_path.endswith('.mcap') else None
        files = sorted(n for n in os.listdir(open_path) if n.endswith('.mcap'))
        return os.path.join(open_path, files[-1]) if len(files) == 1 else None

    @staticmethod
    def _looks_truncated(exc: BaseException) -> bool:
        text = str(exc).lower()
        return any(key in text for key in ('end magic', 'footer', 'summary offset'))

    @staticmethod
    def _hint(open_path: str, exc: BaseException) -> str:
        text = str(exc).lower()
        if 'malformed' in text or 'not a database' in text:
            return ('. The sqlite3 file is damaged or truncated; try '
                    f'`sqlite3 {open_path} ".recover"` into a new file')
        if 'magic' in text:
            return '. The file is not MCAP, or it is damaged'
        return ''

    def _open_truncated_mcap(self, mcap_file: str, cause: BaseException) -> None:
        """Scan an MCAP file without footer with the mcap library (channels, counts)."""
        try:
            from mcap.stream_reader import StreamReader
            from mcap.records import Channel, Message, Schema
        except ImportError as exc:
            raise BagError(
                f'{mcap_file} is truncated (no MCAP footer: the recording was not closed). '
                "Install the mcap library (pip install mcap, or pip install '.[replay]') "
                'to replay what it holds'
            ) from exc
        schemas: Dict[int, str] = {}
        channels: Dict[int, Tuple[str, str]] = {}
        counts: Dict[int, int] = {}
        try:
            with open(mcap_file, 'rb') as stream:
                for record in StreamReader(stream, skip_magic=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record.name
                    elif isinstance(record, Channel):
                        channels[record.id] = (record.topic, schemas.get(record.schema_id, ''))
                    elif isinstance(record, Message):
                        counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
        except _mcap_errors() + (OSError, ValueError) as exc:
            self.truncated_reason = (f'{os.path.basename(mcap_file)} ends early ({cause}; '
                                     f'{type(exc).__name__}): read up to the last complete '
                                     'chunk')
        if not channels:
            raise BagError(
                f'{mcap_file} is truncated inside its first chunk (the recorder stopped before '
                'it closed one): no topic and no message of it can be read. Record again; '
                'a recorder stopped with Ctrl-C closes its file')
        if not self.truncated_reason:
            self.truncated_reason = f'{os.path.basename(mcap_file)} has no MCAP footer ({cause})'
        self.notes.append(self.truncated_reason)
        self._mcap_file = mcap_file
        self.storage = 'mcap'
        for channel_id, (topic, msgtype) in channels.items():
            self._add_topic(topic, msgtype, counts.get(channel_id, 0))

    def message_count(self) -> int:
        """Return the number of messages the bag announces (all topics)."""
        return sum(t.count for t in self.topics.values())

    def messages(self, topics: Sequence[str]) -> Iterator[BagMessage]:
        """
        Yield the messages of ``topics`` in log-time order (file order when truncated).

        A read error ends the stream and sets :attr:`truncated_reason`.
        """
        wanted = set(topics)
        if self._mcap_file is not None:
            yield from self._mcap_messages(wanted)
            return
        reader = self._reader
        connections = [c for c in reader.connections if c.topic in wanted]
        if not connections:
            return
        try:
            for connection, log_time_ns, data in reader.messages(connections=connections):
                yield BagMessage(connection.topic, connection.msgtype, int(log_time_ns),
                                 bytes(data))
        except _reader_errors() as exc:
            self.truncated_reason = f'reading stopped early: {exc}'

    def _mcap_messages(self, wanted: set) -> Iterator[BagMessage]:
        from mcap.reader import NonSeekingReader

        try:
            with open(self._mcap_file, 'rb') as stream:  # type: ignore[arg-type]
                reader = NonSeekingReader(stream, validate_crcs=True)
                for schema, channel, message in reader.iter_messages(
                        topics=sorted(wanted), log_time_order=False):
                    yield BagMessage(channel.topic, schema.name if schema else '',
                                     int(message.log_time), bytes(message.data))
        except _mcap_errors() + (OSError, ValueError):
            pass  # the end of what was recorded; truncated_reason is already set

    def close(self) -> None:
        """Close the recording (safe to call twice)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except _reader_errors():  # pragma: no cover - closing a damaged file
                pass

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
