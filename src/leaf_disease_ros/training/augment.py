"""
Training augmentations on BGR uint8 images, reproducible from a seed.

The augmentations act on the decoded ``(h, w, 3)`` uint8 BGR image *before*
:func:`~leaf_disease_ros.perception.preprocess.preprocess`, so training feeds the model
through exactly the preprocessing the node uses. Every operation returns an image
of the input's shape and dtype.

The set follows what a field camera does to a leaf: scale and framing (random
resized crop, translation), orientation (90 degree turns, small tilts, flips,
perspective), optics (blur, salt-and-pepper sensor noise) and light (brightness,
contrast, saturation, a small hue shift: a large one would turn a healthy green
into a disease colour). Randomness comes only from the ``numpy.random.Generator``
passed in; :func:`sample_rng` derives one per (seed, epoch, sample) so a run is
reproducible whatever the number of loader workers.
"""

from dataclasses import dataclass
import math
from typing import Tuple

import cv2
import numpy as np

_BORDER = cv2.BORDER_REFLECT_101


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (defaults used for the shipped model)."""

    crop_scale: Tuple[float, float] = (0.55, 1.0)
    crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    translate_fraction: float = 0.08
    p_rot90: float = 0.5
    max_rotation_deg: float = 15.0
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_perspective: float = 0.3
    perspective_fraction: float = 0.08
    p_blur: float = 0.25
    blur_sigma_px: Tuple[float, float] = (0.3, 1.5)
    p_noise: float = 0.25
    noise_fraction: Tuple[float, float] = (0.001, 0.01)
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue_deg: float = 6.0


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Return the generator for one sample of one epoch (independent of workers)."""
    return np.random.default_rng([seed, epoch, index])


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        scale: Tuple[float, float], ratio: Tuple[float, float]) -> np.ndarray:
    """Crop a random area fraction and aspect ratio, resize back to the input size."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(area * aspect)))
        ch = int(round(math.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            crop = image[y0:y0 + ch, x0:x0 + cw]
            return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    return image.copy()


def affine(image: np.ndarray, rng: np.random.Generator, max_rotation_deg: float,
           translate_fraction: float) -> np.ndarray:
    """Rotate by a small random angle and translate, reflecting at the border."""
    h, w = image.shape[:2]
    angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    matrix[0, 2] += rng.uniform(-translate_fraction, translate_fraction) * w
    matrix[1, 2] += rng.uniform(-translate_fraction, translate_fraction) * h
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=_BORDER)


def perspective(image: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Move each corner by up to ``fraction`` of the side: a camera not square to the leaf."""
    h, w = image.shape[:2]
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    jitter = rng.uniform(-fraction, fraction, size=(4, 2)) * np.array([w, h])
    dst = (src + jitter).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=_BORDER)


def salt_and_pepper(image: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Set a random ``fraction`` of pixels to black or white (all channels)."""
    out = image.copy()
    h, w = image.shape[:2]
    count = int(round(fraction * h * w))
    if count == 0:
        return out
    ys = rng.integers(0, h, size=count)
    xs = rng.integers(0, w, size=count)
    values = np.where(rng.random(count) < 0.5, 0, 255).astype(np.uint8)
    out[ys, xs] = values[:, None]
    return out


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float,
                  contrast: float, saturation: float, hue_deg: float) -> np.ndarray:
    """Scale brightness, contrast and saturation, and shift hue, in a random order."""
    out = image.astype(np.float32)
    for step in rng.permutation(4):
        if step == 0 and brightness > 0:
            out *= rng.uniform(1 - brightness, 1 + brightness)
        elif step == 1 and contrast > 0:
            mean = float(out.mean())
            out = (out - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
        elif step in (2, 3):
            do_sat = step == 2 and saturation > 0
            do_hue = step == 3 and hue_deg > 0
            if not (do_sat or do_hue):
                continue
            hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV)
            hsv = hsv.astype(np.float32)  # float math: scaling saturation, shifting hue
            if do_sat:
                hsv[..., 1] = hsv[..., 1] * rng.uniform(1 - saturation, 1 + saturation)
            else:
                # OpenCV's 8-bit hue runs 0..179 for 0..358 degrees.
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue_deg, hue_deg) / 2.0) % 180.0
            hsv = np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """
    Apply the training augmentations to one ``(h, w, 3)`` uint8 BGR image.

    Returns a new array of the same shape and dtype; ``image`` is not modified.
    Square inputs keep their shape under 90 degree turns; non-square inputs are
    turned by 180 degrees instead so the shape holds.
    """
    out = random_resized_crop(image, rng, config.crop_scale, config.crop_ratio)
    if rng.random() < config.p_rot90:
        turns = int(rng.integers(1, 4)) if out.shape[0] == out.shape[1] else 2
        out = np.ascontiguousarray(np.rot90(out, turns))
    out = affine(out, rng, config.max_rotation_deg, config.translate_fraction)
    if rng.random() < config.p_hflip:
        out = out[:, ::-1]
    if rng.random() < config.p_vflip:
        out = out[::-1, :]
    out = np.ascontiguousarray(out)
    if rng.random() < config.p_perspective:
        out = perspective(out, rng, config.perspective_fraction)
    out = colour_jitter(out, rng, config.brightness, config.contrast, config.saturation,
                        config.hue_deg)
    if rng.random() < config.p_blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*config.blur_sigma_px),
                               borderType=_BORDER)
    if rng.random() < config.p_noise:
        out = salt_and_pepper(out, rng, rng.uniform(*config.noise_fraction))
    return out
