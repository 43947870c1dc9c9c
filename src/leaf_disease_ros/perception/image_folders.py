"""
Image folders: which files are images, and class-folder datasets (``root/<label>/...``).

The class list is the sorted subfolder names unless given. A class's images are every
image file below its folder, at any depth (``esca/2024/row3/a.jpg`` is an esca image);
hidden files and folders are left out. The classify CLI, the INT8 calibrator and
training list their images through here.
"""

from dataclasses import dataclass
import os
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.perception.errors import DatasetError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path, class index and split group key."""

    path: str
    label_index: int
    group: str = ''


def is_image_file(path: str) -> bool:
    """Return whether ``path`` has an image extension (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def entry_is_folder(entry: 'os.DirEntry[str]') -> bool:
    """Return whether a scandir entry is a folder; a symbolic link loop or dead link is not."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP, EACCES on the link's target
        return False


def entry_is_file(entry: 'os.DirEntry[str]') -> bool:
    """Return whether a scandir entry is a regular file (a link loop is not)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def files_below(folder: str, unreadable: Optional[List[str]] = None) -> List[str]:
    """
    Return every non-hidden file below ``folder`` (any depth), sorted by path.

    :param unreadable: when given, gets ``'FOLDER (reason)'`` for each folder that could
        not be listed (permission denied), which is otherwise passed over.
    """
    def note(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append(f'{exc.filename} ({exc.strerror or exc})')

    found: List[str] = []
    for current, dirs, names in os.walk(folder, onerror=note):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        found += [os.path.join(current, n) for n in names
                  if not n.startswith('.') and os.path.isfile(os.path.join(current, n))]
    return sorted(found)


def list_class_folders(root: str, labels: Optional[Sequence[str]] = None
                       ) -> Tuple[Tuple[str, ...], List[Sample], List[str]]:
    """
    List a class-folder dataset.

    :param root: folder with one subfolder per class.
    :param labels: class list in index order; default the sorted subfolder names. A
        given label without a subfolder is an error; subfolders not listed are
        ignored.

    :returns: ``(labels, samples, skipped)``: samples sorted by class then path (group
        keys empty), and the files skipped for not being images.

    :raises DatasetError: the root is missing, has no class folders, or a class is empty.
    """
    if not os.path.isdir(root):
        raise DatasetError(f'{root} is not a folder; expected one subfolder per class')
    folders = sorted(entry.name for entry in os.scandir(root)
                     if entry_is_folder(entry) and not entry.name.startswith('.'))
    if labels is None:
        labels = folders
    labels = tuple(labels)
    if not labels:
        raise DatasetError(f'{root} has no class subfolders')
    missing = [label for label in labels if label not in folders]
    if missing:
        raise DatasetError(f'{root} has no folder for class(es) {", ".join(missing)} '
                           f'(found: {", ".join(folders) or "none"})')
    samples: List[Sample] = []
    skipped: List[str] = []
    for index, label in enumerate(labels):
        folder = os.path.join(root, label)
        count = 0
        unreadable: List[str] = []
        for path in files_below(folder, unreadable):
            if not is_image_file(path):
                skipped.append(path)
                continue
            samples.append(Sample(path, index))
            count += 1
        if count == 0 and unreadable:
            raise DatasetError(f'class folder {folder} cannot be read: {unreadable[0]}; check '
                               'its permissions (ls -ld) or move it out of the dataset')
        if count == 0:
            raise DatasetError(f'class folder {folder} holds no images '
                               f'({", ".join(IMAGE_EXTENSIONS)})')
    return labels, samples, skipped
