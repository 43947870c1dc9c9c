"""
A site file: one vineyard's adaptation of a model, applied on the model's embedding output.

``leaf-disease-site`` turns one recorded pass of a row the grower believes healthy
into a *site file* (``site.json``). It holds a **site head**: a linear layer that
replaces the model's own output layer (``logits = W @ embedding + b``, ``W`` of
shape ``(C, D)``), trained from the model's own output layer on the pass's tiles
(the site's normal), on diseased and healthy leaves composited into those tiles and
on the grower's labelled tiles. Nothing in the model or the TensorRT engine changes:
the head runs in NumPy after the engine, on the card's ``embedding`` output, so no
engine is rebuilt on the Jetson and the robot needs no torch.

The site file is bound to one model: it records the ONNX file's sha256 and is
refused with any other model (:func:`load_site`). It is dated; a new season, a new
camera or a new variety needs a new reference pass (docs/adaptation.md).

What the site changes, and nothing else:

- the logits the pipeline turns into scores (then the card's temperature, unknown
  threshold and finding score as usual);
- the finding threshold, when the site records one (else the card's);
- the domain check's reference (:attr:`SiteModel.domain`, the embedding distance to
  the training data *and* the site's normal), so the check turns OK on the site.
"""

from dataclasses import dataclass, field
import datetime
import json
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from leaf_disease_ros.perception.embedding_distance import (decode_array, distance_from_section,
                                                            EmbeddingDistance, encode_array)
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.json_fields import FieldReader, is_sha256
from leaf_disease_ros.perception.model_card import ModelCard

SITE_KIND = 'leaf_disease_site'
SCHEMA_VERSION = 1
SITE_FILE = 'site.json'
#: a site older than this is reported as stale (a season)
STALE_AFTER_DAYS = 200


class SiteError(LeafDiseaseError):
    """A site file is missing, malformed, or was made for another model."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f'site file {path}: {reason}')


@dataclass(frozen=True)
class SiteModel:
    """
    One site's head on the model's embeddings (module docstring).

    ``weights`` ``(C, D)`` float32 and ``bias`` ``(C,)`` float32, columns in the card's
    label order; ``finding_threshold`` None: the card's.
    """

    name: str
    model_sha256: str
    model_name: str
    created_utc: str
    weights: np.ndarray
    bias: np.ndarray
    finding_threshold: Optional[float] = None
    domain: Optional[EmbeddingDistance] = None
    record: Mapping[str, Any] = field(default_factory=dict)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 logits of ``(N, D)`` embeddings."""
        x = np.asarray(embeddings, dtype=np.float32)
        return (x @ self.weights.T + self.bias).astype(np.float32)

    @property
    def site_id(self) -> str:
        """Return ``<name>@<created date>``, what diagnostics and reports name."""
        return f'{self.name}@{self.created_utc[:10]}'

    def age_days(self, now: Optional[datetime.datetime] = None) -> float:
        """Return the site's age in days (0 when its date cannot be read)."""
        try:
            made = datetime.datetime.fromisoformat(self.created_utc.replace('Z', '+00:00'))
        except ValueError:
            return 0.0
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if made.tzinfo is None:
            made = made.replace(tzinfo=datetime.timezone.utc)
        return (now - made).total_seconds() / 86400.0

    def to_dict(self) -> Dict[str, Any]:
        """Return the JSON document of the site file."""
        doc: Dict[str, Any] = {
            'kind': SITE_KIND,
            'schema_version': SCHEMA_VERSION,
            'name': self.name,
            'model_sha256': self.model_sha256,
            'model_name': self.model_name,
            'created_utc': self.created_utc,
            'head': {'weights': encode_array(self.weights), 'bias': encode_array(self.bias)},
        }
        if self.finding_threshold is not None:
            doc['finding_threshold'] = float(self.finding_threshold)
        if self.domain is not None:
            doc['domain'] = self.domain.to_dict()
        doc['record'] = dict(self.record)
        return doc


def _fail(path: str) -> Any:
    def error(name: str, reason: str) -> SiteError:
        return SiteError(path, f'field {name!r}: {reason}')
    return error


def site_from_dict(doc: Any, card: ModelCard, path: str = '<site>') -> SiteModel:
    """
    Read a site document and check it belongs to ``card``'s model.

    :raises SiteError: malformed, another model, or a model without an embedding output.
    """
    reader = FieldReader(doc, _fail(path))
    reader.choice('kind', (SITE_KIND,))
    version = reader.raw('schema_version')
    if version != SCHEMA_VERSION:
        raise SiteError(path, f'schema_version {version!r} is not {SCHEMA_VERSION}; rebuild '
                        'the site with leaf-disease-site')
    sha = reader.text('model_sha256')
    if not is_sha256(sha):
        raise SiteError(path, "field 'model_sha256': is not a sha256 (64 hex digits)")
    if sha != card.onnx_sha256:
        raise SiteError(path, f'was made for model {reader.raw("model_name", "?")}@{sha[:12]}, '
                        f'not {card.name}@{card.onnx_sha256[:12]}: a site belongs to one '
                        'model; record a reference pass and run leaf-disease-site with this '
                        'model (docs/adaptation.md)')
    if not card.embedding_name or not card.embedding_size:
        raise SiteError(path, f'model {card.name} has no embedding output '
                        '(output.embedding_name): a site head needs one')
    classes, size = len(card.labels), int(card.embedding_size)
    head = reader.section('head')
    weights = decode_array(head, 'weights', (classes, size))
    bias = decode_array(head, 'bias', (classes,))
    threshold: Optional[float] = None
    if reader.raw('finding_threshold', None) is not None:
        threshold = reader.number('finding_threshold')
        if not 0.0 < threshold <= 1.0:
            raise SiteError(path, f"field 'finding_threshold': {threshold} is not in (0, 1]")
    domain = None
    if reader.raw('domain', None) is not None:
        domain = distance_from_section(reader.section('domain'), -1, size)
    record = reader.raw('record', {})
    return SiteModel(name=reader.text('name'), model_sha256=sha,
                     model_name=str(reader.raw('model_name', '')),
                     created_utc=reader.text('created_utc'), weights=weights, bias=bias,
                     finding_threshold=threshold, domain=domain,
                     record=record if isinstance(record, dict) else {})


def site_file_in(path: str) -> str:
    """Return the site file of ``path``: the file itself, or ``site.json`` in a folder."""
    return os.path.join(path, SITE_FILE) if os.path.isdir(path) else path


def load_site(path: str, card: ModelCard) -> SiteModel:
    """
    Load the site file at ``path`` (a ``site.json`` or the site folder holding it).

    :raises SiteError: unreadable, malformed or made for another model.
    """
    file = site_file_in(path)
    try:
        with open(file, 'rb') as stream:
            raw = stream.read(64 * 1024 * 1024 + 1)
    except OSError as exc:
        raise SiteError(file, f'cannot be read ({exc.strerror or exc}); build one with '
                        'leaf-disease-site BAG --out SITE_FOLDER') from exc
    if len(raw) > 64 * 1024 * 1024:
        raise SiteError(file, 'is larger than 64 MiB: not a site file')
    try:
        doc = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SiteError(file, f'is not JSON ({exc})') from exc
    return site_from_dict(doc, card, file)


def site_for_parameters(values: Mapping[str, Any], card: ModelCard) -> Optional[SiteModel]:
    """Return the site the validated parameters name (``site_path``), or None."""
    path = values.get('site_path', '')
    return load_site(path, card) if path else None


def stale_site_note(site: SiteModel) -> str:
    """Return a warning when the site is older than a season, else ``''``."""
    age = site.age_days()
    if age <= STALE_AFTER_DAYS:
        return ''
    return (f'site {site.site_id} is {age:.0f} days old: a new season (or camera, or '
            'variety) needs a new reference pass and leaf-disease-site (docs/adaptation.md)')


def utc_now_iso() -> str:
    """Return the current UTC time as ISO 8601 with a ``Z``, seconds resolution."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace('+00:00', 'Z')
