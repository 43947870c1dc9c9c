"""
The replay's output recording: input images + the node's output topics, in MCAP.

:class:`OutputBag` writes a rosbag2 folder (MCAP storage) that Foxglove and
``ros2 bag play`` open: the input image topic (the recorded bytes, unchanged), the
input GPS topic, and what the node would have published for each frame, under the
node's resolved names (``/<node>/detections``, ``/<node>/detections/fix``,
``/<node>/geo_detections``, ``/<node>/label_info``), each at the log time of its
image, and ``/<node>/utm_zone`` (``std_msgs/String``, the run's one UTM zone of
``geo_detections``, e.g. ``31U``) once, with the first frame after the zone is known.
Messages are built by ``ros/conversions.py`` exactly as the node builds them.

In a report folder the bag is the folder :data:`DETECTIONS_BAG` (``detections/``);
rosbags names the MCAP file inside after the folder (``<folder>/<folder>.mcap``), so
the file is ``detections/detections.mcap``, never ``detections.mcap/detections.mcap.mcap``.

The folder is written under a temporary name beside the destination and renamed
into place by :meth:`OutputBag.commit` (an interrupted run leaves no half bag under
the final name); :meth:`OutputBag.abort` removes it.
"""

import os
import shutil
import tempfile
from typing import AbstractSet, Any, Optional

from leaf_disease_ros.geo.utm_zone import RunZone
from leaf_disease_ros.perception.errors import BagError
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.pipeline import FrameResult
from leaf_disease_ros.ros.conversions import (make_header, MessageTypes, to_detection2d_array,
                                              to_detection3d_array, to_geotag_fix, to_label_info)

DETECTIONS_TYPE = 'vision_msgs/msg/Detection2DArray'
GEO_DETECTIONS_TYPE = 'vision_msgs/msg/Detection3DArray'
NAVSATFIX_TYPE = 'sensor_msgs/msg/NavSatFix'
LABEL_INFO_TYPE = 'vision_msgs/msg/LabelInfo'
STRING_TYPE = 'std_msgs/msg/String'
#: the output bag's folder in a report folder (the MCAP file inside: detections.mcap)
DETECTIONS_BAG = 'detections'


def mcap_file(bag_folder: str) -> str:
    """Return the MCAP file rosbags writes in ``bag_folder`` (``<folder>/<name>.mcap``)."""
    folder = bag_folder.rstrip('/')
    return os.path.join(folder, os.path.basename(folder) + '.mcap')


def node_topic(node_name: str, name: str) -> str:
    """Return the resolved private topic ``~/name`` of a node in the root namespace."""
    return f'/{node_name.strip("/")}/{name}'


class OutputBag:
    """
    A rosbag2 (MCAP) being written; :meth:`commit` renames it to ``path``.

    :raises BagError: the destination cannot be written.
    """

    def __init__(self, path: str, typestore: Any, node_name: str, image_topic: str,
                 image_msgtype: str, fix_topic: Optional[str], geo_frame_id: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self._errors = (WriterError, OSError)
        self.path = os.path.abspath(path)
        self._store = typestore
        self._types = MessageTypes.from_typestore(typestore)
        self._geo_frame_id = geo_frame_id
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            self._tmp_dir = tempfile.mkdtemp(prefix=f'.{os.path.basename(self.path)}.',
                                             dir=parent)
        except OSError as exc:
            raise BagError(f'cannot write the output bag in {parent}: {exc.strerror}') from exc
        self._bag_dir = os.path.join(self._tmp_dir, os.path.basename(self.path))
        try:
            self._writer = Writer(self._bag_dir, version=8, storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except self._errors as exc:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise BagError(f'cannot write the output bag {self.path}: {exc}') from exc
        add = self._writer.add_connection
        self._image = add(image_topic, image_msgtype, typestore=typestore)
        self._fix_in = add(fix_topic, NAVSATFIX_TYPE, typestore=typestore) if fix_topic else None
        self._detections = add(node_topic(node_name, 'detections'), DETECTIONS_TYPE,
                               typestore=typestore)
        self._fix_out = add(node_topic(node_name, 'detections/fix'), NAVSATFIX_TYPE,
                            typestore=typestore)
        self._geo = add(node_topic(node_name, 'geo_detections'), GEO_DETECTIONS_TYPE,
                        typestore=typestore)
        self._label_info = add(node_topic(node_name, 'label_info'), LABEL_INFO_TYPE,
                               typestore=typestore)
        self._utm_zone = add(node_topic(node_name, 'utm_zone'), STRING_TYPE,
                             typestore=typestore)
        self.messages = 0
        self._label_info_written = False
        self._utm_zone_written = False

    def _write(self, connection: Any, log_time_ns: int, data: bytes) -> None:
        try:
            self._writer.write(connection, int(log_time_ns), data)
        except self._errors as exc:  # e.g. the disk is full
            raise BagError(f'cannot write the output bag {self.path}: {exc}') from exc
        self.messages += 1

    def _serialize(self, msg: Any, msgtype: str) -> bytes:
        return bytes(self._store.serialize_cdr(msg, msgtype))

    def write_fix(self, log_time_ns: int, data: bytes) -> None:
        """Copy one recorded NavSatFix (raw CDR)."""
        if self._fix_in is not None:
            self._write(self._fix_in, log_time_ns, data)

    def write_frame(self, log_time_ns: int, image_data: bytes, header: Any,
                    result: Optional[FrameResult], card: ModelCard,
                    unknown_threshold: float,
                    confirmed: Optional[AbstractSet[int]] = None,
                    zone: Optional[RunZone] = None) -> None:
        """
        Copy the image and write the node's outputs for it (None: frame skipped).

        ``confirmed``: the findings that passed the evidence rule, the only ones in
        ``geo_detections`` (None: every finding). ``zone``: the run's UTM zone
        (None: each frame its own, a run of one frame).
        """
        if not self._label_info_written:
            info = to_label_info(card, make_header(int(log_time_ns), '', self._types),
                                 self._types, unknown_threshold)
            self._write(self._label_info, log_time_ns, self._serialize(info, LABEL_INFO_TYPE))
            self._label_info_written = True
        self._write(self._image, log_time_ns, image_data)
        if result is None:
            return
        types = self._types
        self._write(self._detections, log_time_ns,
                    self._serialize(to_detection2d_array(result, header, types),
                                    DETECTIONS_TYPE))
        self._write(self._fix_out, log_time_ns,
                    self._serialize(to_geotag_fix(result, header, types), NAVSATFIX_TYPE))
        self._write(self._geo, log_time_ns,
                    self._serialize(to_detection3d_array(result, header, self._geo_frame_id,
                                                         types, confirmed, zone=zone),
                                    GEO_DETECTIONS_TYPE))
        if zone is not None and zone.zone is not None and not self._utm_zone_written:
            self._write(self._utm_zone, log_time_ns, self._serialize(
                self._store.types[STRING_TYPE](data=zone.zone.name), STRING_TYPE))
            self._utm_zone_written = True

    def commit(self) -> None:
        """Close the bag and move it to its final path (replacing an older one)."""
        try:
            self._writer.close()
        except self._errors as exc:
            raise BagError(f'cannot write the output bag {self.path}: {exc}') from exc
        old = None
        if os.path.lexists(self.path):  # an older bag, or a file of that name
            old = os.path.join(self._tmp_dir, 'old')
            os.replace(self.path, old)
        os.replace(self._bag_dir, self.path)
        shutil.rmtree(self._tmp_dir, ignore_errors=True)  # with the old one inside

    def abort(self) -> None:
        """Drop the unfinished bag."""
        finish = getattr(self._writer, 'abort', self._writer.close)  # abort: rosbags >= 0.11
        try:
            finish()
        except Exception:  # noqa: B902 - closing a broken writer must not mask the cause
            pass
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
