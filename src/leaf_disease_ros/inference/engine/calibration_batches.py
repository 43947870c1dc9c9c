"""
INT8 calibration data: an image folder -> fixed-size batches through the card's preprocessing.

TensorRT's entropy calibrator measures activation ranges on representative inputs;
those inputs must be exactly what the node feeds the engine, so every image goes
through :func:`leaf_disease_ros.perception.preprocess.preprocess` with the model card,
never through a resize of its own. Nothing here touches the GPU: the build tool
copies each batch to device memory.

- :func:`list_calibration_images` lists the image files of a folder (recursively,
  sorted, optionally an evenly spread subset of at most ``max_images``);
- :class:`CalibrationBatches` reads them in order, skips files OpenCV cannot decode
  (recording which), and yields ``(batch_size, 3, H, W)`` float32 batches. A
  calibration profile has one fixed batch size, so a last incomplete batch is
  dropped and counted, never padded with invented images.
"""

import os
from typing import Callable, Iterator, List, Optional

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.image_folders import is_image_file
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.preprocess import preprocess

ImageReader = Callable[[str], Optional[np.ndarray]]


def read_bgr(path: str) -> Optional[np.ndarray]:
    """Return the image at ``path`` as BGR uint8, or None when OpenCV cannot decode it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return None
    return image


def list_calibration_images(folder: str, max_images: int = 0) -> List[str]:
    """
    Return the image files under ``folder`` (recursive, sorted by path).

    :param max_images: when > 0 and the folder holds more, keep this many spread
        evenly over the sorted list (so every class subfolder is represented).

    :raises DatasetError: the folder does not exist or holds no image file.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f'calibration folder {folder} does not exist; give a folder of '
                           'field-like leaf images (e.g. a class-folder dataset)')
    found: List[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if is_image_file(name))
    found.sort()
    if not found:
        raise DatasetError(f'calibration folder {folder} holds no image files')
    if 0 < max_images < len(found):
        step = len(found) / float(max_images)
        found = [found[int(i * step)] for i in range(max_images)]
    return found


class CalibrationBatches:
    """
    Iterate fixed-size preprocessed batches over a list of image files.

    After iteration, :attr:`skipped` lists the files that could not be decoded,
    :attr:`used` counts the images that went into batches and :attr:`dropped`
    those left over in a last incomplete batch.
    """

    def __init__(self, paths: List[str], card: ModelCard, batch_size: int,
                 reader: ImageReader = read_bgr) -> None:
        """
        Prepare batching of ``paths`` with the preprocessing of ``card``.

        :raises DatasetError: ``batch_size`` < 1 or no paths.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DatasetError(f'calibration batch size must be a positive integer, got '
                               f'{batch_size!r}')
        if not paths:
            raise DatasetError('no calibration images given')
        self.paths = list(paths)
        self.card = card
        self.batch_size = batch_size
        self._reader = reader
        self.skipped: List[str] = []
        self.used = 0
        self.dropped = 0

    @property
    def batch_shape(self) -> tuple:
        """Return ``(batch_size, 3, H, W)``."""
        return (self.batch_size, 3, self.card.input_height_px, self.card.input_width_px)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield ``(batch_size, 3, H, W)`` float32 C-contiguous batches."""
        self.skipped = []
        self.used = 0
        self.dropped = 0
        pending: List[np.ndarray] = []
        for path in self.paths:
            image = self._reader(path)
            if image is None:
                self.skipped.append(path)
                continue
            pending.append(image)
            if len(pending) == self.batch_size:
                self.used += len(pending)
                yield preprocess(pending, self.card)
                pending = []
        self.dropped = len(pending)

    def count_batches(self) -> int:
        """Return how many full batches the paths can give at most (before decoding)."""
        return len(self.paths) // self.batch_size
