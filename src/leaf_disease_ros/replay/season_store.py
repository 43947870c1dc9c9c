"""
The season folder's bookkeeping: which bags a season holds, their ids, keys and robots.

Nothing here imports Ray. A season command is given bags and folders of bags;
:func:`find_bags` turns them into :class:`SeasonBag` entries:

- a bag is a rosbag2 folder (it holds ``metadata.yaml``) or a lone ``.mcap`` /
  ``.db3`` file; a folder that is not a bag is searched (sorted, depth first) for bags;
- its **id** (``season/bags/<id>/``) is its path relative to the folder it was found
  in (its name when given itself), made a safe file name, plus 8 hex digits of its
  absolute path: stable across reruns, distinct for two bags of the same name;
- its **robot** is, in order: the mapping file's entry for the bag's id, its name or
  its parent folder's name (``--robots robots.yaml``: ``{name: robot}``); else the
  namespace of its image topic when ``robot_from`` is ``namespace`` (``/robot2/camera/
  image_raw/compressed`` -> ``robot2``, decided in the task, which opens the bag);
  else the name of the folder holding the bag (``season_bags/robot2/row3_0601/``);
- its **content key** (:func:`bag_content_key`) is the total size of its files and a
  SHA-256 of its metadata: ``metadata.yaml`` of a folder, or the first 64 KiB and the
  last 1 MiB of a lone file (an MCAP file's summary and footer live at its end). A
  recording copied again, re-indexed or cut has another key; reading a few MiB per bag
  keeps a rerun over hundreds of GB of bags in seconds.

A bag's result is redone when its **run key** changes (:func:`run_key`): the content
key, the model and card bytes, the site file's bytes (parameter ``site_path``), the
validated parameters and the package version.
"""

from dataclasses import dataclass
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from leaf_disease_ros.perception.errors import BagError, ConfigError
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.resources import resolve_model_path
from leaf_disease_ros.replay.bag import STORAGE_EXTENSIONS

METADATA_FILE = 'metadata.yaml'
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 1024 * 1024
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')
ROBOT_FROM = ('folder', 'namespace')


@dataclass(frozen=True)
class SeasonBag:
    """One recording of the season: path, id (its result folder) and robot (or '')."""

    path: str
    bag_id: str
    robot: str  # '' : decided by the task (image topic namespace, else folder)
    folder_robot: str  # the folder holding the bag


def is_bag(path: str) -> bool:
    """Return whether ``path`` is a rosbag2 folder or a lone .mcap / .db3 file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, METADATA_FILE))
    return os.path.isfile(path) and os.path.splitext(path)[1] in STORAGE_EXTENSIONS


def _walk_bags(folder: str) -> Iterable[str]:
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise BagError(f'cannot read the folder {folder} ({exc.strerror}); give a folder of '
                       'bags you can read') from exc
    for name in entries:
        if name.startswith('.'):
            continue
        path = os.path.join(folder, name)
        if is_bag(path):
            yield path
        elif os.path.isdir(path) and not os.path.islink(path):
            yield from _walk_bags(path)


def safe_name(text: str) -> str:
    """Return ``text`` as a file name of letters, digits, '.', '_' and '-'."""
    return _UNSAFE.sub('_', text).strip('._') or 'bag'


def bag_id(path: str, root: str) -> str:
    """Return the stable id of the bag at ``path`` found under ``root`` (module docstring)."""
    absolute = os.path.abspath(path)
    base = os.path.abspath(root).rstrip(os.sep)
    relative = os.path.relpath(absolute, base if absolute != base else os.path.dirname(base))
    stem = os.path.splitext(relative)[0] if os.path.isfile(absolute) else relative
    digest = hashlib.sha256(absolute.encode('utf-8')).hexdigest()[:8]
    return f'{safe_name(stem)[-80:]}-{digest}'


def load_robot_map(path: str) -> Dict[str, str]:
    """
    Read a robot mapping file: YAML or JSON ``{bag id, bag name or folder name: robot}``.

    :raises ConfigError: unreadable, not a mapping of names to names.
    """
    import yaml

    try:
        with open(path, encoding='utf-8') as stream:
            document = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError('--robots', f'cannot read {path}: {exc}; give a YAML file of '
                          '"bag or folder name: robot id" lines') from exc
    if not isinstance(document, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) for k, v in document.items()):
        raise ConfigError('--robots', f'{path} is not a mapping of bag or folder names to '
                          'robot ids (e.g. "row3_0601: robot2")')
    return {key: str(value) for key, value in document.items()}


def find_bags(paths: Sequence[str], robots: Optional[Mapping[str, str]] = None,
              robot_from: str = 'folder') -> List[SeasonBag]:
    """
    Return the bags of ``paths`` (bags or folders searched for bags), each once.

    :raises BagError: a path that does not exist, or no bag at all.
    """
    if robot_from not in ROBOT_FROM:
        raise ConfigError('--robot-from', f'must be one of {", ".join(ROBOT_FROM)}')
    robots = robots or {}
    found: Dict[str, SeasonBag] = {}
    for given in paths:
        if not os.path.exists(given):
            raise BagError(f'{given} does not exist; give rosbag2 folders, .mcap / .db3 files '
                           'or folders holding them')
        bags = [given] if is_bag(given) else list(_walk_bags(given))
        if not bags and os.path.isfile(given):
            raise BagError(f'{given} is not a rosbag2 recording (.mcap, .db3 or a folder '
                           f'with {METADATA_FILE})')
        for path in bags:
            absolute = os.path.abspath(path)
            if absolute in found:
                continue
            identity = bag_id(path, given)
            name = os.path.splitext(os.path.basename(absolute.rstrip(os.sep)))[0]
            folder = os.path.basename(os.path.dirname(absolute.rstrip(os.sep)))
            robot = (robots.get(identity) or robots.get(name) or robots.get(folder)
                     or ('' if robot_from == 'namespace' else folder))
            found[absolute] = SeasonBag(absolute, identity, robot, folder)
    if not found:
        raise BagError(f'no rosbag2 recording in {", ".join(paths)} (looked for folders with '
                       f'{METADATA_FILE} and .mcap / .db3 files)')
    return sorted(found.values(), key=lambda bag: bag.bag_id)


def _storage_files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if os.path.isfile(os.path.join(path, name)))


def _head_tail(digest: Any, path: str) -> None:
    size = os.path.getsize(path)
    with open(path, 'rb') as stream:
        digest.update(stream.read(HEAD_BYTES))
        if size > HEAD_BYTES:
            stream.seek(max(HEAD_BYTES, size - TAIL_BYTES))
            digest.update(stream.read(TAIL_BYTES))


def bag_content_key(path: str) -> str:
    """
    Return ``<total bytes>-<sha256 of the metadata>`` of a bag (module docstring).

    :raises BagError: the bag cannot be read.
    """
    digest = hashlib.sha256()
    try:
        files = _storage_files(path)
        total = 0
        metadata = os.path.join(path, METADATA_FILE)
        for file in files:
            total += os.path.getsize(file)
            digest.update(os.path.basename(file).encode('utf-8') + b'\0')
        if os.path.isdir(path) and os.path.isfile(metadata):
            with open(metadata, 'rb') as stream:
                digest.update(stream.read())
        else:
            for file in files:
                _head_tail(digest, file)
    except OSError as exc:
        raise BagError(f'cannot read the bag {path} ({exc.strerror})') from exc
    return f'{total}-{digest.hexdigest()[:32]}'


def file_digest(path: str) -> str:
    """Return the SHA-256 of a file's bytes ('' when it does not exist)."""
    if not path or not os.path.exists(path):
        return ''
    digest = hashlib.sha256()
    files = _storage_files(path) if os.path.isdir(path) else [path]
    for file in files:
        with open(file, 'rb') as stream:
            for block in iter(lambda: stream.read(1 << 20), b''):
                digest.update(block)
    return digest.hexdigest()


def model_identity(parameters: Mapping[str, Any]) -> Dict[str, str]:
    """Return the digests of the model, its card and the site file the parameters name."""
    model = resolve_model_path(str(parameters.get('model_path') or ''))
    card = card_path_for_model(model)
    site = str(parameters.get('site_path') or '')
    return {'model': file_digest(model), 'card': file_digest(card),
            'site': file_digest(site) if site else ''}


def run_key(content_key: str, identity: Mapping[str, str], parameters: Mapping[str, Any],
            version: str, robot: str) -> str:
    """Return the key a finished bag's result must carry to be kept on a rerun."""
    document = {'bag': content_key, 'model': dict(identity), 'version': version,
                'robot': robot,
                'parameters': {k: parameters[k] for k in sorted(parameters)}}
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()
