"""
The model card: the contract that travels with a model.

A card is a JSON file beside the ONNX model (``engines/<name>.json``). It is the
single source of the label list (index order), which labels mean healthy, the input
tensor (name, size, layout, colour order), the preprocessing (resize rule,
interpolation, scale, mean, std), the output name, the calibration (softmax
temperature, unknown threshold) and the ONNX file's sha256. Training, export, the
node, the replay and the CLI all read it; nothing hard-codes a label or a mean.

Example::

    {
      "schema_version": 1,
      "name": "leaf_resnet18",
      "model_file": "leaf_resnet18.onnx",
      "onnx_sha256": "<64 hex>",
      "labels": ["black_rot", "esca", "healthy", "leaf_blight"],
      "healthy_labels": ["healthy"],
      "background_labels": ["background"],
      "input": {"name": "input", "height_px": 160, "width_px": 160,
                "layout": "NCHW", "color_order": "RGB", "dtype": "float32"},
      "preprocessing": {"resize": "stretch", "interpolation": "area",
                        "scale": 0.00392156862745098,
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "output": {"name": "logits"},
      "calibration": {"temperature": 1.0, "unknown_threshold": 0.5,
                      "finding_threshold": 0.8, "operating_point_material": "..."},
      "training": {...}, "metrics": {...}
    }

``background_labels`` (optional) are outputs for what is not a leaf (sky, soil,
posts, wires): like healthy labels they are never a disease. ``finding_threshold``
(optional, default 0.5) is the operating point: the calibrated score a disease tile
needs to be a finding; ``finding_score`` (optional, ``top_label`` or ``disease_mass``)
says which score: the top label's probability, or the probability of all disease
labels together; ``operating_point_material`` says what it was chosen on.
``training``, ``metrics`` and the other keys of ``calibration`` are free-form
records of how the model was made and scored; the runtime ignores them.

``display_names`` (optional) maps labels to the names people read on maps and in
reports (``{"black_rot": "Black rot", "esca": "Esca (black measles)"}``); a label
without one is shown as itself with ``_`` as spaces, capitalised (``Leaf blight``).
Machine-readable outputs (GeoJSON ``label``, messages) keep the label.

Optional (cards without them keep working): ``output.embedding_name`` and
``output.embedding_size`` name a second ONNX output, the penultimate-layer features
``(N, D)``, and ``embedding_distance`` holds the distance-to-training-data statistics
fitted on them (:mod:`leaf_disease_ros.perception.embedding_distance`).
"""

from dataclasses import dataclass, field, replace
import hashlib
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.embedding_distance import (distance_from_section,
                                                            EmbeddingDistance)
from leaf_disease_ros.perception.errors import ModelCardError, ModelLoadError
from leaf_disease_ros.perception.json_fields import FieldReader

SCHEMA_VERSION = 1
UNKNOWN_LABEL = 'unknown'
DEFAULT_FINDING_THRESHOLD = 0.5  # cards written before the field operating point
RESIZE_RULES = ('stretch', 'center_crop')
INTERPOLATIONS = ('area', 'linear', 'cubic')
COLOR_ORDERS = ('RGB', 'BGR')
LAYOUTS = ('NCHW',)
# What a disease tile's finding threshold is compared with: the top label's calibrated
# probability, or the calibrated probability of all disease labels together (a tile
# split between two diseases is still surely diseased).
FINDING_SCORES = ('top_label', 'disease_mass')
_LABEL_RE = re.compile(r'^[A-Za-z0-9_.-]+$')


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. Build it with :func:`card_from_dict` or :func:`load_card`."""

    name: str
    labels: Tuple[str, ...]
    healthy_labels: Tuple[str, ...]
    input_height_px: int
    input_width_px: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    scale: float = 1.0 / 255.0
    input_name: str = 'input'
    layout: str = 'NCHW'
    color_order: str = 'RGB'
    resize: str = 'stretch'
    interpolation: str = 'area'
    output_name: str = 'logits'
    temperature: float = 1.0
    unknown_threshold: float = 0.0
    finding_threshold: float = DEFAULT_FINDING_THRESHOLD
    finding_score: str = 'top_label'
    background_labels: Tuple[str, ...] = ()
    model_file: str = ''
    onnx_sha256: str = ''
    calibration_extra: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    path: Optional[str] = None  # where it was loaded from; not serialised
    embedding_name: str = ''  # second ONNX output: penultimate features; '' = none
    embedding_size: int = 0
    embedding_distance: Optional[EmbeddingDistance] = None
    display_names: Mapping[str, str] = field(default_factory=dict)

    def display_name(self, label: str) -> str:
        """Return the name people read for ``label``: the card's, else the label humanised."""
        return self.display_names.get(label) or humanize_label(label)

    def display_name_map(self) -> Dict[str, str]:
        """Return label -> display name for every label and ``unknown``."""
        return {label: self.display_name(label) for label in self.labels + (UNKNOWN_LABEL,)}

    @property
    def num_classes(self) -> int:
        """Number of output classes (length of the label list)."""
        return len(self.labels)

    @property
    def input_hw_px(self) -> Tuple[int, int]:
        """Model input (height, width) in pixels."""
        return (self.input_height_px, self.input_width_px)

    def is_healthy(self, label: str) -> bool:
        """Return whether ``label`` is one of the card's healthy labels."""
        return label in self.healthy_labels

    @property
    def non_disease_labels(self) -> Tuple[str, ...]:
        """Labels that are never a disease: the healthy and the background labels."""
        return self.healthy_labels + self.background_labels

    def with_model(self, model_file: str, onnx_sha256: str) -> 'ModelCard':
        """Return a copy bound to another model file and hash (used by export)."""
        return replace(self, model_file=model_file, onnx_sha256=onnx_sha256)


def humanize_label(label: str) -> str:
    """Return ``label`` for people: ``black_rot`` -> ``Black rot``."""
    words = label.replace('_', ' ').strip()
    return words[:1].upper() + words[1:] if words else label


def card_from_dict(doc: Any, path: str = '<card>') -> ModelCard:
    """
    Validate a card document and return the card.

    :raises ModelCardError: naming ``path`` and the first offending field.
    """
    card = FieldReader(doc, lambda name, reason: ModelCardError(path, name, reason))
    version = card.raw('schema_version')
    if version != SCHEMA_VERSION:
        raise card.fail('schema_version',
                        f'this package reads version {SCHEMA_VERSION}, got {version!r}')
    name = card.text('name')

    labels = card.raw('labels')
    if not isinstance(labels, list) or len(labels) < 2:
        raise card.fail('labels', 'expected a list of at least 2 label strings')
    for label in labels:
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise card.fail('labels', f'{label!r} is not a label (letters, digits, _ . -)')
    if len(set(labels)) != len(labels):
        raise card.fail('labels', 'contains duplicates')
    if UNKNOWN_LABEL in labels:
        raise card.fail('labels', f'{UNKNOWN_LABEL!r} is reserved for rejected tiles')
    healthy = card.raw('healthy_labels')
    if not isinstance(healthy, list) or any(h not in labels for h in healthy):
        raise card.fail('healthy_labels', f'{healthy!r} must be a list of labels from "labels"')
    background = card.raw('background_labels', [])
    if (not isinstance(background, list) or any(b not in labels for b in background)
            or set(background) & set(healthy)):
        raise card.fail('background_labels', f'{background!r} must be a list of labels from '
                        '"labels" that are not healthy labels')

    display_names = card.mapping('display_names')
    for label, shown in display_names.items():
        if label not in labels or not isinstance(shown, str) or not shown.strip():
            raise card.fail('display_names', f'{label!r}: {shown!r} must map a label from '
                            '"labels" to a non-empty name')

    inp = card.section('input')
    height = inp.integer('height_px', minimum=1)
    width = inp.integer('width_px', minimum=1)
    inp.choice('dtype', ('float32',), default='float32')
    pre = card.section('preprocessing')
    out = card.section('output')
    cal = card.section('calibration')

    sha = card.raw('onnx_sha256', '')
    if sha:
        card.sha256('onnx_sha256')
    model_file = card.raw('model_file', '')
    if not isinstance(model_file, str) or os.path.basename(model_file) != model_file:
        raise card.fail('model_file', f'expected a file name beside the card, got {model_file!r}')

    mean = pre.numbers('mean', 3, what=' (one per channel)')
    std = pre.numbers('std', 3, positive=True, what=' (one per channel)')
    output_name = out.text('name', 'logits')
    embedding_name = out.text('embedding_name', '', allow_empty=True)
    embedding_size = out.integer('embedding_size', 0, minimum=1 if embedding_name else 0)
    if embedding_name == output_name:
        raise out.fail('embedding_name', 'must differ from output.name')
    distance = None
    if card.raw('embedding_distance', None) is not None:
        if not embedding_name:
            raise card.fail('embedding_distance', 'needs output.embedding_name (the model '
                            'output it is computed on)')
        distance = distance_from_section(card.section('embedding_distance'), len(labels),
                                         embedding_size)
    return ModelCard(
        name=name,
        labels=tuple(labels),
        healthy_labels=tuple(healthy),
        input_height_px=height,
        input_width_px=width,
        input_name=inp.text('name', 'input'),
        layout=inp.choice('layout', LAYOUTS, 'NCHW'),
        color_order=inp.choice('color_order', COLOR_ORDERS, 'RGB'),
        resize=pre.choice('resize', RESIZE_RULES, 'stretch'),
        interpolation=pre.choice('interpolation', INTERPOLATIONS, 'area'),
        scale=pre.number('scale', positive=True),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        output_name=output_name,
        temperature=cal.number('temperature', positive=True),
        unknown_threshold=cal.number('unknown_threshold', minimum=0.0, maximum=1.0),
        finding_threshold=cal.number('finding_threshold', DEFAULT_FINDING_THRESHOLD,
                                     minimum=0.0, maximum=1.0),
        finding_score=cal.choice('finding_score', FINDING_SCORES, 'top_label'),
        background_labels=tuple(background),
        model_file=model_file,
        onnx_sha256=sha,
        calibration_extra={k: v for k, v in cal.doc.items()
                           if k not in ('temperature', 'unknown_threshold',
                                        'finding_threshold', 'finding_score')},
        training=card.mapping('training'),
        metrics=card.mapping('metrics'),
        path=path,
        embedding_name=embedding_name,
        embedding_size=embedding_size,
        embedding_distance=distance,
        display_names=display_names,
    )


def card_to_dict(card: ModelCard) -> Dict[str, Any]:
    """Return the JSON document of ``card`` (the inverse of :func:`card_from_dict`)."""
    calibration: Dict[str, Any] = {'temperature': card.temperature,
                                   'unknown_threshold': card.unknown_threshold,
                                   'finding_threshold': card.finding_threshold,
                                   'finding_score': card.finding_score}
    calibration.update(card.calibration_extra)
    output: Dict[str, Any] = {'name': card.output_name}
    if card.embedding_name:
        output.update(embedding_name=card.embedding_name, embedding_size=card.embedding_size)
    doc = {
        'schema_version': SCHEMA_VERSION,
        'name': card.name,
        'model_file': card.model_file,
        'onnx_sha256': card.onnx_sha256,
        'labels': list(card.labels),
        'healthy_labels': list(card.healthy_labels),
        'background_labels': list(card.background_labels),
        'input': {'name': card.input_name, 'height_px': card.input_height_px,
                  'width_px': card.input_width_px, 'layout': card.layout,
                  'color_order': card.color_order, 'dtype': 'float32'},
        'preprocessing': {'resize': card.resize, 'interpolation': card.interpolation,
                          'scale': card.scale, 'mean': list(card.mean),
                          'std': list(card.std)},
        'output': output,
        'calibration': calibration,
        'training': dict(card.training),
        'metrics': dict(card.metrics),
    }
    if card.embedding_distance is not None:
        doc['embedding_distance'] = card.embedding_distance.to_dict()
    if card.display_names:
        doc['display_names'] = dict(card.display_names)
    return doc


def load_card(path: str) -> ModelCard:
    """Read and validate the card at ``path``."""
    try:
        with open(path, 'r', encoding='utf-8') as stream:
            doc = json.load(stream)
    except FileNotFoundError as exc:
        raise ModelCardError(path, '<file>', 'does not exist; every model needs its '
                             'card (<model>.json, written by leaf-disease-export)') from exc
    except OSError as exc:
        raise ModelCardError(path, '<file>', f'cannot be read: {exc.strerror}') from exc
    except ValueError as exc:
        raise ModelCardError(path, '<file>', f'is not valid JSON: {exc}') from exc
    return card_from_dict(doc, path)


def write_card(card: ModelCard, path: str) -> None:
    """Write ``card`` to ``path`` atomically."""
    atomic_write_json(path, card_to_dict(card))


def card_path_for_model(model_path: str) -> str:
    """Return the card path of an ONNX model: the same name with ``.json``."""
    return os.path.splitext(model_path)[0] + '.json'


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_model_file(card: ModelCard, model_path: str) -> str:
    """
    Check that ``model_path`` is the model ``card`` describes; return its sha256.

    :raises ModelCardError: when the card records no hash (nothing would tell a swapped
        model from the right one) or another hash (the model was re-exported without
        its card, or the card belongs to another model).
    :raises ModelLoadError: the model file cannot be read (permission, I/O error).
    """
    try:
        actual = sha256_file(model_path)
    except OSError as exc:
        raise ModelLoadError(f'cannot read the model {model_path}: '
                             f'{exc.strerror or exc}; check its permissions (ls -l) or give '
                             'a model you can read') from exc
    if not card.onnx_sha256:
        raise ModelCardError(
            card.path or '<card>', 'onnx_sha256',
            'is missing, so nothing checks that the model is the one this card describes; '
            'export the model and its card together with leaf-disease-export, or add '
            f'"onnx_sha256": "{actual}" if you know this is the right model')
    if actual != card.onnx_sha256:
        raise ModelCardError(
            card.path or '<card>', 'onnx_sha256',
            f'records {card.onnx_sha256[:12]}... but {model_path} has {actual[:12]}...; '
            'the card belongs to another model: re-export both with leaf-disease-export')
    return actual
