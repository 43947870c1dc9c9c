"""
A scripted backend for replay tests: a tile's label is its strongest colour channel.

Frames are built from solid 256 px tiles (:func:`tiles`): red is ``black_rot``, green
``esca``, blue ``healthy`` (the tiny model's label order, RGB input), and grey tiles
get equal logits, so they fall to ``unknown``. Any test then knows every label the
replay will see without training a model.
"""

from typing import Dict, Sequence

import numpy as np

from leaf_disease_ros.perception.model_card import card_from_dict, ModelCard
from tiny_model import tiny_card_dict

COLOURS_BGR = {'black_rot': (0, 0, 255), 'esca': (0, 255, 0), 'healthy': (255, 0, 0),
               # not quite grey: the replay skips a colourless frame as a grey camera
               # ('no_colour'); a faint tint still gives (nearly) equal logits
               'grey': (128, 128, 131)}


class ColourBackend:
    """A tile's label is its strongest channel (R, G, B); grey gives equal logits."""

    max_batch = 16

    def __init__(self, card: ModelCard, model_id: str = 'colour@000000000000') -> None:
        self.card = card
        self.model_id = model_id

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return logits: 12 for the strongest channel's class, 0 elsewhere."""
        means = batch.mean(axis=(2, 3))
        logits = np.zeros((batch.shape[0], self.card.num_classes), dtype=np.float32)
        coloured = means.max(axis=1) - means.min(axis=1) > 0.5
        rows = np.flatnonzero(coloured)
        logits[rows, means[rows].argmax(axis=1)] = 12.0
        return logits

    def describe(self) -> Dict[str, object]:
        """Return what the report records of the backend."""
        return {'backend': 'scripted', 'model_id': self.model_id, 'model': 'colour'}

    def close(self) -> None:
        """Nothing to release."""


def colour_card(folder: str, **extra: object) -> ModelCard:
    """Return a 32 px card with the tiny model's labels (no ONNX file is needed)."""
    doc = tiny_card_dict(_touch(folder))
    doc['onnx_sha256'] = ''
    doc.update(extra)
    return card_from_dict(doc)


def _touch(folder: str) -> str:
    path = f'{folder}/colour.onnx'
    with open(path, 'wb'):
        pass  # the card reader hashes a file; the backend is scripted
    return path


def tiles(labels: Sequence[str]) -> np.ndarray:
    """Return a 256 px high BGR frame with one solid 256 px tile per name."""
    return np.hstack([np.full((256, 256, 3), COLOURS_BGR[name], dtype=np.uint8)
                      for name in labels])
