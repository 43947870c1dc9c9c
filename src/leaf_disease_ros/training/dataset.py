"""
Training datasets: grouping a class-folder dataset by physical leaf, and the grouped split.

Listing the folders is :mod:`leaf_disease_ros.perception.image_folders`; training,
export and ``leaf-disease-split`` split through here.

Splitting is always by group, never per image: PlantVillage photographs each leaf
about four times with consecutive photo numbers, so a random split puts photos of
one leaf on both sides and inflates validation accuracy. :func:`photo_block_groups`
cuts each class's photo numbers into contiguous blocks (40 numbers by default, as
the dataset README advises); :func:`regex_groups` groups other data by a user regex;
:func:`file_groups` makes every file its own group.
"""

import os
import random
import re
from typing import Dict, List, Optional, Sequence, Tuple

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.image_folders import list_class_folders, Sample

# '<series> <photo number>.JPG' (after the '<uuid>___' prefix) -> series, number
_PHOTO_RE = re.compile(r'^(?P<series>.*?)[ _-]?(?P<number>\d+)(?: \(\d+\))?\.\w+$')


def photo_number(path: str) -> Optional[Tuple[str, int]]:
    """Return ``(series, photo number)`` of a PlantVillage file name, or None."""
    # PlantVillage prefixes every name with a per-image uuid: '<uuid>___<rest>'.
    name = os.path.basename(path).split('___')[-1]
    match = _PHOTO_RE.match(name)
    if match is None:
        return None
    return match.group('series').strip(), int(match.group('number'))


def photo_block_groups(samples: Sequence[Sample], block_size: int = 40) -> List[Sample]:
    """
    Group by contiguous blocks of photo number within class and photo series.

    Files whose name carries no photo number fall back to one group per file.
    """
    if block_size < 1:
        raise DatasetError(f'block size must be >= 1, got {block_size}')
    grouped = []
    for sample in samples:
        parsed = photo_number(sample.path)
        if parsed is None:
            key = f'{sample.label_index}:file:{os.path.basename(sample.path)}'
        else:
            series, number = parsed
            key = f'{sample.label_index}:{series}:{number // block_size}'
        grouped.append(Sample(sample.path, sample.label_index, key))
    return grouped


def regex_groups(samples: Sequence[Sample], pattern: str) -> List[Sample]:
    """
    Group by a regex on the file name: group 1 if the pattern has one, else the match.

    :raises DatasetError: the pattern is invalid or does not match a file name.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f'group regex {pattern!r} is invalid: {exc}') from exc
    grouped = []
    for sample in samples:
        name = os.path.basename(sample.path)
        match = compiled.search(name)
        if match is None:
            raise DatasetError(f'group regex {pattern!r} does not match {name!r}')
        key = match.group(1) if compiled.groups else match.group(0)
        grouped.append(Sample(sample.path, sample.label_index, f'{sample.label_index}:{key}'))
    return grouped


def file_groups(samples: Sequence[Sample]) -> List[Sample]:
    """Make every file its own group (for data with one photo per object)."""
    return [Sample(s.path, s.label_index, f'{s.label_index}:file:{s.path}') for s in samples]


def grouped_split(samples: Sequence[Sample], val_fraction: float, seed: int
                  ) -> Tuple[List[Sample], List[Sample]]:
    """
    Split into (train, validation) by whole groups, stratified by class.

    Within each class the groups are shuffled with ``seed`` and taken into the
    validation side until it holds at least ``val_fraction`` of the class's images
    (at least one group, and at least one group left for training). No group is
    ever on both sides.

    :raises DatasetError: a sample has no group key, ``val_fraction`` is not in (0, 1),
        or a class has fewer than two groups.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f'validation fraction must be in (0, 1), got {val_fraction}')
    by_class: Dict[int, Dict[str, List[Sample]]] = {}
    for sample in samples:
        if not sample.group:
            raise DatasetError(f'{sample.path} has no group key; group before splitting')
        by_class.setdefault(sample.label_index, {}).setdefault(sample.group, []).append(sample)
    rng = random.Random(seed)
    train: List[Sample] = []
    val: List[Sample] = []
    for label_index in sorted(by_class):
        groups = by_class[label_index]
        keys = sorted(groups)
        if len(keys) < 2:
            raise DatasetError(f'class {label_index} has {len(keys)} group(s); a grouped '
                               'split needs at least 2 (more images or smaller groups)')
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        taken = 0
        val_keys = []
        for key in keys[:-1]:
            if taken >= val_fraction * total:
                break
            val_keys.append(key)
            taken += len(groups[key])
        val_set = set(val_keys)
        for key in sorted(groups):
            (val if key in val_set else train).extend(groups[key])
    return train, val


def build_split(root: str, labels: Optional[Sequence[str]] = None, group: str = 'photo-blocks',
                block_size: int = 40, group_regex: Optional[str] = None,
                val_fraction: float = 0.2, seed: int = 0, max_per_class: int = 0
                ) -> Tuple[Tuple[str, ...], List[Sample], List[Sample], List[str]]:
    """
    List, group and split a class-folder dataset: the rule training and tools share.

    :param root: dataset root (one subfolder per class).
    :param labels: class list; default the sorted folder names.
    :param group: ``photo-blocks``, ``regex`` or ``file``.
    :param block_size: photo numbers per block for ``photo-blocks``.
    :param group_regex: the regex for ``regex``.
    :param val_fraction: share of each class's images for validation.
    :param seed: shuffles the groups.
    :param max_per_class: keep at most this many images per class (0 = all).
    :returns: ``(labels, train, val, skipped_files)``.
    :raises DatasetError: bad folder, grouping or split parameters.
    """
    labels, samples, skipped = list_class_folders(root, labels)
    if max_per_class:
        kept: Dict[int, int] = {}
        limited = []
        for sample in samples:
            if kept.get(sample.label_index, 0) < max_per_class:
                kept[sample.label_index] = kept.get(sample.label_index, 0) + 1
                limited.append(sample)
        samples = limited
    if group == 'photo-blocks':
        samples = photo_block_groups(samples, block_size)
    elif group == 'regex':
        if not group_regex:
            raise DatasetError('grouping by regex needs a group regex')
        samples = regex_groups(samples, group_regex)
    elif group == 'file':
        samples = file_groups(samples)
    else:
        raise DatasetError(f'unknown grouping {group!r} (photo-blocks, regex, file)')
    train, val = grouped_split(samples, val_fraction, seed)
    return labels, train, val, skipped
