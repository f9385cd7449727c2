"""facezoo.eval.ijb against a literal transcription of insightface's eval_ijbc.py (loops over templates/pairs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facezoo.eval import ijb
from facezoo.eval.insightface_reference import image2template as _ref_image2template
from facezoo.eval.insightface_reference import verification_scores
from facezoo.eval.roc import roc_curve


def _ref_pipeline(
    feats, flips, faceness, templates, medias, t1, t2, use_flip=True, use_norm_score=True, use_detector_score=True
):
    img = np.concatenate([feats, flips], 1)
    d = img.shape[1] // 2
    x = img[:, :d] + img[:, d:] if use_flip else img[:, :d]
    if not use_norm_score:
        x = x / np.sqrt(np.sum(x**2, -1, keepdims=True))
    if use_detector_score:
        x = x * faceness[:, np.newaxis]
    tf, ut = _ref_image2template(x, templates, medias)
    return verification_scores(tf, ut, t1, t2, chunk=100)


def _fixture(rng, n_images=600, n_templates=60, n_pairs=1500, dim=32):
    subjects = rng.integers(0, 12, n_templates)
    centers = rng.standard_normal((12, dim))
    templates = np.concatenate([np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)]) + 5
    rng.shuffle(templates)
    medias = rng.integers(0, 40, n_images) * 1000 + templates  # several images share a media within a template
    medias[rng.random(n_images) < 0.1] = 7  # and a media id shared across templates
    feats = (centers[subjects[templates - 5]] + 0.8 * rng.standard_normal((n_images, dim))).astype(np.float32) * 9
    flips = (feats + 0.1 * rng.standard_normal(feats.shape)).astype(np.float32)
    faceness = rng.uniform(0.3, 1.0, n_images).astype(np.float32)
    t1 = rng.integers(0, n_templates, n_pairs) + 5
    t2 = rng.integers(0, n_templates, n_pairs) + 5
    labels = (subjects[t1 - 5] == subjects[t2 - 5]).astype(int)
    return feats, flips, faceness, templates, medias, t1, t2, labels


def test_template_features_equal_reference():
    rng = np.random.default_rng(0)
    feats, flips, faceness, templates, medias, *_ = _fixture(rng)
    ours, ut = ijb.image_to_template_features(feats, templates, medias)
    ref, rut = _ref_image2template(feats, templates, medias)
    assert np.array_equal(ut, rut)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("mode", ["default", "no_flip", "image_l2", "no_faceness"])
def test_evaluate_equals_reference_pipeline(mode):
    rng = np.random.default_rng(1)
    feats, flips, faceness, templates, medias, t1, t2, labels = _fixture(rng)
    kw = dict(
        flip_features=None if mode == "no_flip" else flips,
        faceness=None if mode == "no_faceness" else faceness,
        normalize_images=mode == "image_l2",
    )
    res = ijb.evaluate(feats, templates, medias, t1, t2, labels, **kw)
    ref = _ref_pipeline(
        feats,
        flips,
        faceness,
        templates,
        medias,
        t1,
        t2,
        use_flip=mode != "no_flip",
        use_norm_score=mode != "image_l2",
        use_detector_score=mode != "no_faceness",
    )
    np.testing.assert_allclose(res["scores"], ref, rtol=0, atol=1e-6)
    fpr, tpr, _ = roc_curve(labels, ref)
    for far, tar in res["tar_at_far"].items():
        flipped = np.abs(np.flipud(fpr) - far)
        assert tar == np.flipud(tpr)[int(np.argmin(flipped))]
    assert set(res["tar_at_far"]) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
    assert res["num_templates"] == 60 and res["num_pairs"] == 1500 and 0 < res["auc"] <= 1


def test_modes_change_scores():
    rng = np.random.default_rng(2)
    feats, flips, faceness, templates, medias, t1, t2, labels = _fixture(rng)
    base = ijb.evaluate(feats, templates, medias, t1, t2, labels, faceness=faceness, flip_features=flips)["scores"]
    for kw in (
        dict(faceness=faceness),
        dict(flip_features=flips),
        dict(faceness=faceness, flip_features=flips, normalize_images=True),
    ):
        other = ijb.evaluate(feats, templates, medias, t1, t2, labels, **kw)["scores"]
        assert not np.allclose(base, other)


@pytest.mark.parametrize("dense", [True, False])
def test_pair_scores_dense_and_sparse_paths(dense):
    rng = np.random.default_rng(3)
    f = rng.standard_normal((500, 24))
    if dense:  # few templates on each side, many pairs: blocked matrix products
        r1, r2 = rng.integers(0, 20, 5000), rng.integers(20, 500, 5000)
    else:  # pairs spread over all template combinations: gather path
        r1, r2 = rng.integers(0, 500, 300), rng.integers(0, 500, 300)
    ref = np.sum(f[r1] * f[r2], -1)
    np.testing.assert_allclose(ijb.pair_scores(f, r1, r2, max_block_bytes=4096), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ijb.pair_scores(torch.from_numpy(f), r1, r2), ref, rtol=0, atol=1e-12)


def test_concatenated_features_split():
    f = np.arange(12, dtype=np.float32).reshape(2, 6)
    a, b = ijb.split_concat_features(f)
    assert np.array_equal(a + b, f[:, :3] + f[:, 3:])
    with pytest.raises(ValueError):
        ijb.split_concat_features(f[:, :5])


def test_unknown_template_and_bad_lengths():
    rng = np.random.default_rng(4)
    feats, flips, faceness, templates, medias, t1, t2, labels = _fixture(rng)
    t2 = t2.copy()
    t2[17] = 99999
    with pytest.raises(ValueError, match=r"template 99999 \(entry 17, line 18 of the pair list\) has no images"):
        ijb.evaluate(feats, templates, medias, t1, t2, labels)
    with pytest.raises(ValueError, match="lengths differ"):
        ijb.evaluate(feats, templates, medias, t1, t2[:-1], labels)
    with pytest.raises(ValueError, match="faceness"):
        ijb.evaluate(feats, templates, medias, t1, t1, labels, faceness=faceness[:-1])
    with pytest.raises(ValueError, match="image features"):
        ijb.image_to_template_features(feats[:-1], templates, medias)
