"""Class folders, the leaf-grouped split, augmentations, metrics and calibration."""

import os
import shutil

import cv2
import numpy as np
import pytest

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.metrics import (classification_report, confusion_matrix,
                                                 expected_calibration_error, format_report)
from leaf_disease_ros.perception.plots import render_confusion_matrix
from leaf_disease_ros.training.augment import augment, AugmentConfig, sample_rng
from leaf_disease_ros.training.calibration import (calibrate, choose_unknown_threshold,
                                                   fit_temperature, negative_log_likelihood)
from leaf_disease_ros.training.dataset import (file_groups, grouped_split, list_class_folders,
                                               photo_block_groups, photo_number, regex_groups)


def test_photo_number_parsing():
    assert photo_number('x/0a1b-2c___FAM_B.Rot 0376.JPG') == ('FAM_B.Rot', 376)
    assert photo_number('Mt.N.V_HL 6067.JPG') == ('Mt.N.V_HL', 6067)
    assert photo_number('IMG_0012.jpg') == ('IMG', 12)
    assert photo_number('leaf.png') is None


def test_list_class_folders(leaves_dir, tmp_path):
    labels, samples, skipped = list_class_folders(leaves_dir)
    assert labels == ('black_rot', 'esca', 'healthy', 'leaf_blight')
    assert len(samples) == 24 and skipped == []
    copy = tmp_path / 'data'
    shutil.copytree(leaves_dir, copy)
    (copy / 'esca' / 'notes.txt').write_text('not an image')
    _, _, skipped = list_class_folders(str(copy))
    assert [os.path.basename(p) for p in skipped] == ['notes.txt']
    with pytest.raises(DatasetError, match='no folder for class'):
        list_class_folders(str(copy), ['esca', 'powdery_mildew'])
    os.makedirs(copy / 'empty_class')
    with pytest.raises(DatasetError, match='holds no images'):
        list_class_folders(str(copy))
    with pytest.raises(DatasetError, match='not a folder'):
        list_class_folders(str(tmp_path / 'nope'))


def test_photo_blocks_group_photos_of_one_leaf(leaves_dir):
    _, samples, _ = list_class_folders(leaves_dir)
    grouped = photo_block_groups(samples, block_size=40)
    groups = {}
    for sample in grouped:
        groups.setdefault(sample.group, []).append(sample)
    # test data: per class, 3 blocks of 2 consecutive photos
    assert len(groups) == 12
    assert all(len(members) == 2 for members in groups.values())


def test_grouped_split_never_shares_a_group(leaves_dir):
    _, samples, _ = list_class_folders(leaves_dir)
    grouped = photo_block_groups(samples)
    train, val = grouped_split(grouped, 0.3, seed=1)
    assert not {s.group for s in train} & {s.group for s in val}
    assert len(train) + len(val) == 24
    for label_index in range(4):  # stratified: every class on both sides
        assert any(s.label_index == label_index for s in train)
        assert any(s.label_index == label_index for s in val)
    assert grouped_split(grouped, 0.3, seed=1) == (train, val)  # deterministic
    assert grouped_split(grouped, 0.3, seed=2) != (train, val)


def test_grouped_split_on_the_real_dataset():
    root = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'datasets',
                        'plantvillage_grape')
    if not os.path.isdir(root):
        pytest.skip('../shared/datasets/plantvillage_grape is not beside the repository')
    _, samples, _ = list_class_folders(root)
    train, val = grouped_split(photo_block_groups(samples), 0.2, seed=0)
    assert not {s.group for s in train} & {s.group for s in val}
    assert 0.18 < len(val) / len(samples) < 0.3
    # blocks are leaves, not files: far fewer groups than images
    assert len({s.group for s in train + val}) < len(samples) / 10


def test_regex_and_file_groups(leaves_dir):
    _, samples, _ = list_class_folders(leaves_dir)
    by_series = regex_groups(samples, r'___(\S+) ')
    assert len({s.group for s in by_series}) == 4
    with pytest.raises(DatasetError, match='does not match'):
        regex_groups(samples, r'^zzz')
    with pytest.raises(DatasetError, match='invalid'):
        regex_groups(samples, r'(')
    assert len({s.group for s in file_groups(samples)}) == 24
    with pytest.raises(DatasetError, match='at least 2'):
        grouped_split(by_series, 0.2, 0)


def test_augment_keeps_shape_dtype_and_is_deterministic(leaf_images):
    image = cv2.imread(leaf_images['esca'][0])
    before = image.copy()
    a = augment(image, sample_rng(7, 3, 11))
    b = augment(image, sample_rng(7, 3, 11))
    c = augment(image, sample_rng(7, 3, 12))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(image, before)  # input untouched
    rect = np.ascontiguousarray(image[:200])
    for i in range(20):
        assert augment(rect, sample_rng(0, 0, i)).shape == rect.shape


def test_augment_with_everything_on(leaf_images):
    image = cv2.imread(leaf_images['leaf_blight'][0])
    config = AugmentConfig(p_rot90=1, p_hflip=1, p_vflip=1, p_perspective=1, p_blur=1,
                           p_noise=1, noise_fraction=(0.05, 0.05))
    out = augment(image, sample_rng(0, 0, 0), config)
    assert out.shape == image.shape and out.dtype == np.uint8
    extremes = np.all(out == 0, axis=2) | np.all(out == 255, axis=2)
    assert extremes.mean() > 0.04  # the salt-and-pepper pixels are there


def test_confusion_matrix_and_report_known_answer():
    true = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 0, 1, 1, -1, 2, 2, 0]
    matrix = confusion_matrix(true, pred, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 0], [1, 0, 2]]
    report = classification_report(true, pred, ['a', 'b', 'c'])
    assert report['accuracy'] == pytest.approx(5 / 8)
    assert report['unknown_count'] == 1
    a = report['per_class']['a']
    assert (a['precision'], a['recall']) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    b = report['per_class']['b']
    assert (b['precision'], b['recall'], b['f1']) == (0.5, 0.5, 0.5)
    c = report['per_class']['c']
    assert c['precision'] == 1.0 and c['recall'] == pytest.approx(2 / 3)
    assert report['macro_f1'] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    text = format_report(report)
    assert 'accuracy: 0.6250' in text and 'unknown: 1 (counted wrong)' in text
    # argmax reports (training, classify) have no unknown: the line does not claim 0
    assert 'unknown' not in format_report(classification_report([0], [0], ['a']))


def test_absent_class_not_in_macro_average():
    report = classification_report([0, 0], [0, 0], ['a', 'b'])
    assert report['macro_f1'] == 1.0 and report['per_class']['b']['support'] == 0
    # not applicable, never a 0.000 beside a macro-F1 of 1.000
    assert report['per_class']['b'] == {'precision': None, 'recall': None, 'f1': None,
                                        'support': 0}
    assert report['macro_f1_labels'] == ['a']
    text = format_report(report)
    assert 'macro-F1: 1.0000 over 1 of 2 classes (b: no samples, n/a)' in text
    per_class_row, matrix_row = (line.split() for line in text.splitlines()
                                 if line.startswith('b '))
    assert per_class_row == ['b', 'n/a', 'n/a', 'n/a', '0'] and matrix_row == ['b', '0', '0']
    # predicted but absent: precision 0 (all false alarms); present, never predicted: 0
    report = classification_report([0, 0, 1], [1, 0, 0], ['a', 'b', 'c'])
    assert report['per_class']['b']['precision'] == 0.0
    assert report['per_class']['b']['recall'] == 0.0
    assert report['per_class']['c']['precision'] is None
    assert report['macro_f1_labels'] == ['a', 'b']


def test_ece_known_answer():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    true = [0, 1, 0, 0]
    # bin 0.9: accuracy 0.5 vs confidence 0.9; bin 0.6: accuracy 1.0 vs 0.6
    assert expected_calibration_error(probs, true) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_fit_temperature_recovers_true_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 4))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    # an overconfident model: logits scaled by 3
    temperature = fit_temperature(true_logits * 3.0, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert negative_log_likelihood(true_logits * 3, labels, temperature) < \
        negative_log_likelihood(true_logits * 3, labels, 1.0)
    cal = calibrate(true_logits * 3.0, labels)
    assert cal['ece_after'] < cal['ece_before']


def test_unknown_threshold_rule():
    probs = np.array([[0.9, 0.05, 0.05]] * 90 + [[0.6, 0.3, 0.1]] * 10)
    true = [0] * 95 + [1] * 5
    chosen = choose_unknown_threshold(probs, true, max_reject_fraction=0.05)
    # the 5 % quantile of the top scores is 0.6: nothing strictly below it is rejected
    assert chosen['threshold'] == pytest.approx(0.6)
    assert chosen['rejected_fraction'] == 0.0
    assert chosen['accepted_accuracy'] == pytest.approx(0.95)
    strict = choose_unknown_threshold(probs, true, max_reject_fraction=0.5)
    assert strict['threshold'] == pytest.approx(0.9)  # the cap
    assert strict['rejected_fraction'] == pytest.approx(0.1)
    assert strict['errors_rejected_fraction'] == 1.0
    floor = choose_unknown_threshold(np.array([[0.5, 0.5]] * 10), [0] * 10, 0.02)
    assert floor['threshold'] == pytest.approx(0.55)  # 1/C + 0.05
    assert 'validation tiles' in floor['rule']


def test_confusion_matrix_png(tmp_path):
    image = render_confusion_matrix([[5, 1], [0, 7]], ['healthy', 'esca'], title='t')
    assert image.ndim == 3 and image.dtype == np.uint8
    assert (image < 250).any()
