"""SyntheticFaces: deterministic, aligned, fast, disjoint held-out identities, and not trivially separable."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from facezoo.data import SyntheticFaces, load_bin, synthetic_pairs
from facezoo.data.synthetic import VERIFY_IDENTITY_OFFSET, render_face


def test_dataset_interface_and_determinism():
    ds = SyntheticFaces(num_identities=5, images_per_identity=3, seed=7)
    assert len(ds) == 15 and ds.num_classes == 5
    im, label = ds[4]
    assert im.dtype == torch.uint8 and im.shape == (3, 112, 112) and label == 1 and isinstance(label, int)
    assert torch.equal(im, SyntheticFaces(5, 3, seed=7)[4][0])  # same seed -> same image
    assert not torch.equal(im, SyntheticFaces(5, 3, seed=8)[4][0])  # other seed -> other image
    assert not torch.equal(ds[3][0], ds[4][0])  # same identity, other nuisance
    assert ds[-1][1] == 4
    with pytest.raises(IndexError):
        ds[15]
    t = SyntheticFaces(2, 2, transform=lambda x: x.float() / 255)
    assert t[0][0].dtype == torch.float32


def test_identity_traits_are_stable_without_nuisance():
    a, b = render_face(0, 3, 0, difficulty=0.0), render_face(0, 3, 1, difficulty=0.0)
    c = render_face(0, 4, 0, difficulty=0.0)
    # without nuisance only the background and noise draw differ; the face itself (centre) is the same identity
    centre = (slice(40, 100), slice(30, 82))
    diff_same = np.abs(a[centre].astype(int) - b[centre].astype(int)).mean()
    diff_other = np.abs(a[centre].astype(int) - c[centre].astype(int)).mean()
    assert diff_same < 4 < diff_other


def test_pairs_are_disjoint_from_training_and_balanced():
    images, issame = synthetic_pairs(10, seed=0)
    assert images.shape == (20, 3, 112, 112) and images.dtype == torch.uint8
    assert issame.dtype == torch.bool and issame.tolist() == [True, False] * 5
    # verification identities live at VERIFY_IDENTITY_OFFSET+; training ones are far below
    with pytest.raises(ValueError, match="VERIFY_IDENTITY_OFFSET"):
        SyntheticFaces(num_identities=10, identity_offset=VERIFY_IDENTITY_OFFSET - 5)
    again, _ = synthetic_pairs(10, seed=0)
    assert torch.equal(images, again)


def test_render_speed_per_core():
    for i in range(10):
        render_face(0, i, 0)
    n, start = 0, time.process_time()
    while time.process_time() - start < 1.0:
        render_face(0, n % 10, n)
        n += 1
    rate = n / (time.process_time() - start)
    # the benchmark records the real figure (>= 1000/s); here a loose floor that tolerates a loaded CI machine
    assert rate > 300, f"{rate:.0f} images/s"


def _fine_accuracy(emb: torch.Tensor, same: np.ndarray) -> float:
    """Best single threshold over every distinct similarity, on all pairs: optimistic for an untrained model."""
    sim = (emb[0::2] * emb[1::2]).sum(1).numpy()
    return max(((sim > t) == same).mean() for t in np.unique(sim) - 1e-7)


def test_untrained_model_is_near_chance():
    # raw pixels (plain and per-image centred) and random CNNs must not tell held-out identities apart: the
    # per-image nuisance hides the identity's tone; the benchmark shows a small trained CNN passes 0.9
    from facezoo.eval.verification import evaluate

    images, issame = synthetic_pairs(400, seed=1)
    same = issame.numpy()
    x = (images.float() / 255 - 0.5) / 0.5
    flat = x.flatten(1)
    embeddings = {"pixels": F.normalize(flat, dim=1), "centred": F.normalize(flat - flat.mean(1, keepdim=True), dim=1)}
    for seed in range(2):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(1024, 128),
        ).eval()
        with torch.no_grad():
            embeddings[f"cnn{seed}"] = F.normalize(net(x) + net(x.flip(3)), dim=1)
    acc = {k: (evaluate(e, issame)["accuracy"], _fine_accuracy(e, same)) for k, e in embeddings.items()}
    assert all(a < 0.60 and fine < 0.62 for a, fine in acc.values()), acc
    # the same check would catch an identity cue: without the camera nuisance, raw pixels separate identities
    clean, clean_same = synthetic_pairs(400, seed=1, difficulty=0.3)
    pix = F.normalize(((clean.float() / 255 - 0.5) / 0.5).flatten(1), dim=1)
    assert evaluate(pix, clean_same)["accuracy"] > 0.65


def test_synth_cli_writes_rec_and_bin(tmp_path):
    from facezoo.cli import main
    from facezoo.data import RecordIOFaces

    assert (
        main(["data", "synth", str(tmp_path), "--identities", "4", "--per-identity", "3", "--pairs", "6", "--quiet"])
        == 0
    )
    ds = RecordIOFaces(tmp_path)
    assert len(ds) == 12 and ds.num_classes == 4 and ds.header is not None
    assert [ds[i][1] for i in range(12)] == [i // 3 for i in range(12)]
    ref = SyntheticFaces(4, 3)[5][0].float()
    assert (ds[5][0].float() - ref).abs().mean() < 4  # JPEG q95 of the same render
    images, issame = load_bin(tmp_path / "synth_verify.bin")
    assert images.shape == (12, 3, 112, 112) and issame.tolist() == [True, False] * 3
    assert (tmp_path / "property").read_text().strip() == "4,112,112"
