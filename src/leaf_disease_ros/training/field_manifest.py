"""
The manifest of the field material: what each real photo and each held-out leaf may do.

Owns the one table that says, for every photo of ``../shared/datasets/field_grape_small``,
whether it **trains** (a training background of the shipped models), **tunes** (it
chose an operating point or steered the design of a model) or only **tests**
(:data:`FIELD_PHOTOS`, with the evidence), and the split of the PlantVillage
validation leaves into a tuning half and a test half by leaf block
(:func:`validation_halves`).

Rules the validation material follows (``leaf-disease-train-field validation``):

- PlantVillage: the leaf-grouped split of training (photo-number blocks, seed, block
  size; :func:`leaf_disease_ros.training.dataset.build_split`) decides train versus
  validation; the validation side is split again by whole leaf blocks
  (:func:`~leaf_disease_ros.training.dataset.grouped_split`), so all photos of one leaf
  sit in one half.
- Real field photos: a photo with role ``tune`` feeds only the tuning half, one with
  role ``test`` only the test half, one with role ``train`` neither. Only photos of
  folders that show no disease (:data:`NEGATIVE_FOLDERS`) are used as backgrounds;
  crops of one photo are therefore all on one side.
- A photo that trained or tuned a model is never counted as a test of it.
- The site-adaptation check (the developer script ``make_row_bags.py``) cuts its
  reference pass and its test pass from different photos and says which role each has
  here; a site head is fitted on its reference photos only, and no shipped model or
  figure changes with it.
"""

from dataclasses import dataclass
import glob
import os
from typing import Dict, List, Sequence, Tuple

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.image_folders import Sample
from leaf_disease_ros.training.dataset import build_split, grouped_split

ROLES: Tuple[str, ...] = ('train', 'tune', 'test')
HALVES: Tuple[str, ...] = ('tune', 'test')
# Folders of field_grape_small whose photos show no disease the models should find:
# their crops may be negatives (healthy or background) of the composites.
NEGATIVE_FOLDERS: Tuple[str, ...] = ('healthy', 'autumn_senescence', 'unlabeled_field')
# The leaf-grouped split the shipped field models were trained with.
SPLIT_SEED = 0
BLOCK_SIZE = 40
VAL_FRACTION = 0.2
TEST_SHARE = 0.5


@dataclass(frozen=True)
class FieldPhoto:
    """One photo of ``field_grape_small``: its path, its role and what it did."""

    path: str
    role: str
    did: str


_TRAIN_BG = ('training background of both shipped models (field_sim.FIELD_NEGATIVES '
             "'train', commit 33ca625): random crops are composite backgrounds and negatives")
_TUNED = ("held-out background of the old validation cache (FIELD_NEGATIVES 'val'): its "
          'crops in half A chose the finding threshold of both shipped cards (round 1 and 2)')
_ESCA = ('round 1 found no esca on it, which led to the painted tiger-stripe esca of round 2 '
         '(field_sim.esca_field_symptoms was designed looking at the esca photos; '
         'docs/training.md, round 2); round-2 results were reported on it')
_UNTAUGHT = ('evaluated only (per-photo counts of round 1 and 2, an untaught disease); no '
             'decision in the code, the cards or the git history used it')

FIELD_PHOTOS: Tuple[FieldPhoto, ...] = (
    FieldPhoto('healthy/esca_alessandrini_ThePebblesFr__healthy_1.jpg', 'train', _TRAIN_BG),
    FieldPhoto('autumn_senescence/matheli_vineleaf__Rote_Herbstfaerbung.jpg', 'train', _TRAIN_BG),
    FieldPhoto('unlabeled_field/mareseestern_vineleaf__example.jpg', 'train', _TRAIN_BG),
    FieldPhoto('healthy/matheli_vineleaf__Gesundes_Weinblatt.jpg', 'tune', _TUNED),
    FieldPhoto('autumn_senescence/matheli_vineleaf__Gelbe_Herbstfaerbung.jpg', 'tune',
               _TUNED + '; the round-1 false findings on autumn crops led to the autumn '
               'colouring of round 2'),
    FieldPhoto('esca/esca_alessandrini_ThePebblesFr__esca_1.jpg', 'tune', _ESCA),
    FieldPhoto('esca/esca_alessandrini_ThePebblesFr__esca_2.jpg', 'tune', _ESCA),
    FieldPhoto('esca/mareseestern_vineleaf__Esca.jpg', 'tune', _ESCA),
    FieldPhoto('esca/matheli_vineleaf__esca.jpg', 'tune', _ESCA),
    FieldPhoto('downy_mildew/matheli_vineleaf__DSC_0159.jpg', 'test', _UNTAUGHT),
    FieldPhoto('downy_mildew/matheli_vineleaf__f34c1f70-5f11-45e7-83aa-af7534d35027.jpg',
               'test', _UNTAUGHT),
    FieldPhoto('powdery_mildew/mareseestern_vineleaf__Echter_Mehltau.jpg', 'test',
               _UNTAUGHT + '; it is also a reference-pass photo of the site-adaptation '
               'check (REFERENCE_PHOTOS of the developer script make_row_bags.py): it '
               'shapes a site head there, never a shipped model or its figures'),
    FieldPhoto('bois_noir/mareseestern_vineleaf__Schwarzholz.jpg', 'test', _UNTAUGHT),
    FieldPhoto('bois_noir/matheli_vineleaf__Schwarzholzkrankheit_Bild.jpg', 'test', _UNTAUGHT),
)


def photo_role(path: str) -> str:
    """
    Return the role (``train``, ``tune`` or ``test``) of a field photo.

    :param path: the photo relative to the field-photo folder (``folder/name.jpg``).
    :raises DatasetError: the photo is not in the manifest (a new photo must be given a
        role before any figure uses it).
    """
    for photo in FIELD_PHOTOS:
        if photo.path == path:
            return photo.role
    raise DatasetError(f'field photo {path!r} is not in the manifest '
                       '(training/field_manifest.py FIELD_PHOTOS): give it a role first')


def photos_with_role(role: str, negatives_only: bool = False) -> Tuple[str, ...]:
    """Return the photos of ``role``; with ``negatives_only``, of :data:`NEGATIVE_FOLDERS`."""
    if role not in ROLES:
        raise DatasetError(f'unknown field-photo role {role!r} (one of {", ".join(ROLES)})')
    return tuple(p.path for p in FIELD_PHOTOS if p.role == role
                 and (not negatives_only or p.path.split('/')[0] in NEGATIVE_FOLDERS))


def background_photos(half: str) -> Tuple[str, ...]:
    """Return the field photos whose crops are backgrounds of validation half ``half``."""
    if half not in HALVES:
        raise DatasetError(f'unknown validation half {half!r} (tune or test)')
    return photos_with_role(half, negatives_only=True)


def check_field_folder(field_root: str) -> List[str]:
    """
    Return the photos of ``field_root`` (relative paths, sorted), all in the manifest.

    :raises DatasetError: a photo of the folder has no role in the manifest.
    """
    found = sorted(os.path.relpath(p, field_root).replace(os.sep, '/')
                   for p in glob.glob(os.path.join(field_root, '*', '*.jpg')))
    for path in found:
        photo_role(path)
    return found


def manifest_document() -> List[Dict[str, str]]:
    """Return the manifest as JSON-ready rows (path, role, what it did)."""
    return [{'path': p.path, 'role': p.role, 'did': p.did} for p in FIELD_PHOTOS]


def validation_halves(pv_root: str, seed: int = 0, split_seed: int = SPLIT_SEED,
                      block_size: int = BLOCK_SIZE, val_fraction: float = VAL_FRACTION
                      ) -> Tuple[Tuple[str, ...], List[Sample], List[Sample]]:
    """
    Return ``(labels, tuning half, test half)`` of the PlantVillage validation leaves.

    The training split (``split_seed``, ``block_size``, ``val_fraction``; the shipped
    models' is 0, 40, 0.2) decides train versus validation; its validation samples are
    then split by whole leaf blocks (their group keys) with ``seed``, the test half
    taking at least :data:`TEST_SHARE` of each class. Samples carry their block key in
    ``Sample.group``.

    :raises DatasetError: a bad folder, or a class with fewer than two validation blocks.
    """
    labels, _train, val, _ = build_split(pv_root, None, 'photo-blocks', block_size, None,
                                         val_fraction, split_seed)
    tune, test = grouped_split(val, TEST_SHARE, seed)
    return tuple(labels), tune, test


def leaf_rows(samples: Sequence[Sample], pv_root: str) -> List[Dict[str, str]]:
    """Return JSON rows (photo relative to ``pv_root``, leaf block) of ``samples``."""
    return [{'photo': os.path.relpath(s.path, pv_root).replace(os.sep, '/'),
             'block': s.group} for s in samples]
