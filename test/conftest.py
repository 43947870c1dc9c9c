"""Shared fixtures: paths to the real test images and a tiny ONNX model with its card."""

import os
import shutil
from typing import Dict, List

import pytest

from leaf_disease_ros.perception.model_card import card_path_for_model, load_card, ModelCard
from tiny_model import make_tiny_model

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(TEST_DIR, 'data')
LEAVES_DIR = os.path.join(DATA_DIR, 'leaves')
REPO_DIR = os.path.dirname(TEST_DIR)
SHARED_DATASET = os.path.join(REPO_DIR, '..', 'shared', 'datasets', 'plantvillage_grape')


@pytest.fixture(scope='session')
def leaves_dir() -> str:
    """Return the folder of real PlantVillage leaf photos, one subfolder per class."""
    return LEAVES_DIR


@pytest.fixture(scope='session')
def leaf_images() -> Dict[str, List[str]]:
    """Return label -> sorted list of image paths under test/data/leaves."""
    found = {}
    for label in sorted(os.listdir(LEAVES_DIR)):
        folder = os.path.join(LEAVES_DIR, label)
        found[label] = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    return found


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return a folder holding tiny.onnx + tiny.json (session-wide, do not modify)."""
    folder = str(tmp_path_factory.mktemp('tiny_model'))
    make_tiny_model(folder)
    return folder


@pytest.fixture(scope='session')
def tiny_model_path(tiny_model_dir: str) -> str:
    """Return the path of the tiny ONNX model (input 32x32, 4 classes, dynamic batch)."""
    return os.path.join(tiny_model_dir, 'tiny.onnx')


@pytest.fixture(scope='session')
def tiny_card(tiny_model_path: str) -> ModelCard:
    """Return the tiny model's card, loaded from disk."""
    return load_card(card_path_for_model(tiny_model_path))


@pytest.fixture()
def tiny_model_copy(tmp_path, tiny_model_path: str) -> str:
    """Return a private copy of the tiny model and card that a test may modify."""
    for src in (tiny_model_path, card_path_for_model(tiny_model_path)):
        shutil.copy(src, tmp_path / os.path.basename(src))
    return str(tmp_path / 'tiny.onnx')


@pytest.fixture(scope='session')
def tiny_embedding_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the tiny model with a second output ``embedding`` (N, 8), card naming it."""
    folder = str(tmp_path_factory.mktemp('tiny_embedding_model'))
    make_tiny_model(folder, name='tiny_emb', embedding_name='embedding')
    return os.path.join(folder, 'tiny_emb.onnx')
