"""Embeddings of old and new models, the embedding map, silhouette, AUROC, leaf-disease-embed."""

import json
import re

import numpy as np
import pytest

from leaf_disease_ros.cli.embed import main
from leaf_disease_ros.explain.domain_check import compare_scores, distance_threshold
from leaf_disease_ros.explain.embedding_map import (map_html, MapPoint, project,
                                                    render_map_png, silhouette_score,
                                                    subsample)
from leaf_disease_ros.explain.embeddings import (DerivedEmbeddingBackend, embed_images,
                                                 open_embedding_backend, penultimate_tensor)
from leaf_disease_ros.perception.embedding_distance import fit_distance
from leaf_disease_ros.perception.errors import LeafDiseaseError, ModelLoadError
from leaf_disease_ros.perception.metrics import auroc

try:
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except (ImportError, AttributeError):  # scipy's array-API probe fails when torch is hidden
    HAVE_SKLEARN = False


def test_auroc_matches_the_definition():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(neg, pos) == pytest.approx(brute)
    with pytest.raises(ValueError):
        auroc([], [1])


def test_silhouette_score_against_a_brute_force():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(4, 1, (20, 5)),
                        rng.normal(-4, 1, (1, 5))])
    labels = ['a'] * 30 + ['b'] * 20 + ['c']
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    expected = []
    for i, own in enumerate(labels):
        same = [j for j, lab in enumerate(labels) if lab == own and j != i]
        if not same:
            expected.append(0.0)
            continue
        a = dist[i, same].mean()
        b = min(dist[i, [j for j, lab in enumerate(labels) if lab == other]].mean()
                for other in set(labels) - {own})
        expected.append((b - a) / max(a, b))
    assert silhouette_score(x, labels, chunk_rows=7) == pytest.approx(np.mean(expected))
    with pytest.raises(LeafDiseaseError):
        silhouette_score(x, ['a'] * len(x))


def test_projection_and_subsample():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (40, 6))
    x[:, 3] *= 10
    xy = project(x, 'pca')
    assert xy.shape == (40, 2)
    assert np.corrcoef(xy[:, 0], x[:, 3])[0, 1] ** 2 > 0.9
    with pytest.raises(LeafDiseaseError):
        project(x[:2])
    labels = ['a'] * 30 + ['b'] * 10
    rows = subsample(40, labels, 20)
    assert len(rows) == 20 and sum(labels[i] == 'b' for i in rows) == 5
    assert subsample(40, labels, 100) is None


@pytest.mark.skipif(not HAVE_SKLEARN, reason='scikit-learn is not installed (explain extra)')
def test_tsne_projection_is_bounded_and_seeded():
    x = np.random.default_rng(3).normal(0, 1, (30, 8))
    first = project(x, 'tsne', seed=1)
    assert first.shape == (30, 2)
    np.testing.assert_allclose(first, project(x, 'tsne', seed=1), atol=1e-4)


def test_map_png_and_html_are_self_contained():
    xy = np.array([[0, 0], [1, 1], [2, 0]], np.float32)
    points = [MapPoint('esca', 'esca', 0.9, 'a.jpg', b'\xff\xd8'),
              MapPoint('healthy', 'esca', 0.6, 'b</script>.jpg', b''),
              MapPoint('downy_mildew', 'healthy', 0.7, 'c.jpg', b'')]
    image = render_map_png(xy, points, ('esca', 'healthy'), 'title', size_px=300)
    assert image.shape == (300, 520, 3)
    page = map_html(xy, points, ('esca', 'healthy'), 'map <1>', 'summary')
    assert page.count('<circle') == 1 and page.count('<path') == 2
    assert 'map &lt;1&gt;' in page and 'b<\\/script>.jpg' in page
    assert not re.search(r'(src|href)="https?:', page)


def test_old_models_get_their_penultimate_features(tiny_model_path):
    backend = open_embedding_backend(tiny_model_path, 'onnxruntime')
    assert isinstance(backend, DerivedEmbeddingBackend) and backend.feature_tensor == 'flat'
    logits, features = embed_images(backend, [np.zeros((40, 40, 3), np.uint8)] * 3)
    assert logits.shape == (3, 4) and features.shape == (3, 8)
    backend.close()


def test_models_with_an_embedding_output_use_it(tiny_embedding_model_path):
    backend = open_embedding_backend(tiny_embedding_model_path, 'onnxruntime')
    assert not isinstance(backend, DerivedEmbeddingBackend)
    assert embed_images(backend, [np.zeros((40, 40, 3), np.uint8)])[1].shape == (1, 8)


def test_penultimate_tensor_needs_a_classifier_head():
    from onnx import helper
    node = helper.make_node('Softmax', ['x'], ['logits'])
    graph = helper.make_graph([node], 'g', [], [])
    with pytest.raises(ModelLoadError, match='Gemm or MatMul'):
        penultimate_tensor(graph, 'logits')


def test_domain_check_prefers_the_better_score():
    rng = np.random.default_rng(4)
    train = rng.normal(0, 1, (200, 6))
    labels = rng.integers(0, 2, 200)
    distance = fit_distance(train, labels, 2, components=3)
    inside = rng.normal(0, 1, (50, 6))
    outside = rng.normal(0, 1, (50, 6)) + 6.0
    confident = np.tile([[9.0, 0.0]], (50, 1))  # softmax equally sure on both sides
    check = compare_scores(distance, 1.0, confident, inside, confident, outside,
                           threshold=distance_threshold(distance.distances(inside), 0.02),
                           softmax_threshold=0.5)
    assert check['auroc_distance'] > 0.99 and check['auroc_softmax'] == 0.5
    assert check['distance_separates_better']
    assert check['in_domain_rejected_by_distance'] <= 0.02
    assert check['out_of_domain_rejected_by_distance'] > 0.9
    assert check['out_of_domain_rejected_by_softmax'] == 0.0
    assert distance_threshold(np.arange(100.0), 0.02) == 97.0


def test_embed_command_writes_maps_and_domain_check(leaves_dir, tiny_model_path, tmp_path,
                                                    capsys):
    out = tmp_path / 'map'
    ood = tmp_path / 'ood'
    ood.mkdir()
    import cv2
    cv2.imwrite(str(ood / 'sky.png'), np.full((300, 500, 3), (235, 200, 150), np.uint8))
    assert main([leaves_dir, '--model', tiny_model_path, '--out', str(out), '--ood', str(ood),
                 '--ood-tile-size', '128', '--fit', leaves_dir]) == 0
    printed = capsys.readouterr().out
    assert 'embedded 24 images (8-D, tiny)' in printed and 'silhouette' in printed
    assert 'AUROC distance' in printed
    summary = json.loads((out / 'embedding.json').read_text())
    assert summary['images'] == 24 and -1.0 <= summary['silhouette'] <= 1.0
    check = summary['domain_check']
    assert check['all']['out_of_domain'] == 12  # 3 x 4 tiles of 128 px (edge-aligned)
    assert check['distance'].startswith('fitted on 24 images')
    assert (out / 'embedding_map_pca.png').stat().st_size > 1000
    page = (out / 'embedding_map_pca.html').read_text()
    assert page.count('"t": "/9j/') == 24  # 24 inlined JPEG thumbnails


def test_embed_command_errors(tmp_path, tiny_model_path, capsys):
    assert main([str(tmp_path / 'nothing'), '--model', tiny_model_path,
                 '--out', str(tmp_path / 'o')]) == 2
    assert 'is not a folder' in capsys.readouterr().err


def test_ood_without_fit_on_a_folder_lacking_a_class(leaves_dir, tiny_model_path, tmp_path,
                                                     capsys):
    # the shipped model has a background class no leaf folder holds: fitting the
    # distance on DATA itself ended in "ValueError: need ... a row of every class"
    import shutil

    import cv2
    data = tmp_path / 'data'
    shutil.copytree(leaves_dir, data)
    shutil.rmtree(data / 'leaf_blight')
    ood = tmp_path / 'ood'
    ood.mkdir()
    cv2.imwrite(str(ood / 'sky.png'), np.full((256, 256, 3), (235, 200, 150), np.uint8))
    out = tmp_path / 'map'
    assert main([str(data), '--model', tiny_model_path, '--out', str(out), '--ood', str(ood),
                 '--ood-tile-size', '128']) == 0
    check = json.loads((out / 'embedding.json').read_text())['domain_check']
    assert check['distance'] == ('fitted on DATA itself (18 images: optimistic) (no images '
                                 'of leaf_blight: their class means are left out)')
    assert check['all']['out_of_domain'] == 4
    assert 'AUROC distance' in capsys.readouterr().out
