"""IJB-B/C meta readers and aligned image dataset, on generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facezoo.data import ARCFACE_TEMPLATE, DataError, IJBAlignedImages, read_ijb


def _make_ijb(root: Path, t: str = "ijbc", n: int = 4) -> list[np.ndarray]:
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    rng = np.random.default_rng(0)
    lmks = []
    tid_lines, lmk_lines = [], []
    for i in range(n):
        name = f"{i + 1}.jpg"
        Image.fromarray(rng.integers(0, 255, (150, 130, 3), dtype=np.uint8)).save(root / "loose_crop" / name)
        lmk = ARCFACE_TEMPLATE + rng.uniform(0, 20, (1, 2)).astype(np.float32)
        lmks.append(lmk)
        tid_lines.append(f"{name} {100 + i // 2} {500 + i}")
        lmk_lines.append(name + " " + " ".join(f"{v:.4f}" for v in lmk.ravel()) + f" {0.5 + 0.1 * i:.3f}")
    (root / "meta" / f"{t}_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / f"{t}_name_5pts_score.txt").write_text("\n".join(reversed(lmk_lines)) + "\n")
    (root / "meta" / f"{t}_template_pair_label.txt").write_text("100 101 0\n100 100 1\n")
    return lmks


def test_read_ijb_and_align(tmp_path):
    lmks = _make_ijb(tmp_path)
    meta = read_ijb(tmp_path, "IJBC")
    assert meta.target == "IJBC" and meta.image_names == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert meta.templates.dtype == np.int64 and meta.templates.tolist() == [100, 100, 101, 101]
    assert meta.medias.tolist() == [500, 501, 502, 503]
    assert meta.landmarks.dtype == np.float32 and meta.landmarks.shape == (4, 5, 2)
    np.testing.assert_allclose(meta.landmarks[2], lmks[2], atol=1e-3)  # joined by name, not by line order
    np.testing.assert_allclose(meta.faceness, [0.5, 0.6, 0.7, 0.8], atol=1e-6)
    assert meta.t1.tolist() == [100, 100] and meta.t2.tolist() == [101, 100] and meta.labels.tolist() == [0, 1]
    ds = IJBAlignedImages(meta)
    assert len(ds) == 4
    x = ds[1]
    assert x.dtype == torch.uint8 and x.shape == (3, 112, 112)
    # landmarks are the template shifted: the aligned crop is the shifted window of the source image
    src = np.asarray(Image.open(tmp_path / "loose_crop" / "2.jpg").convert("RGB")).astype(np.float32)
    dx, dy = (lmks[1] - ARCFACE_TEMPLATE)[0]
    window = src[int(round(dy)) + 10 : int(round(dy)) + 60, int(round(dx)) + 10 : int(round(dx)) + 60]
    got = x.permute(1, 2, 0).numpy()[10:60, 10:60].astype(np.float32)
    if abs(dx - round(dx)) < 1e-3 and abs(dy - round(dy)) < 1e-3:
        np.testing.assert_allclose(got, window, atol=1)
    assert np.corrcoef(got.ravel(), window.ravel())[0, 1] > 0.3


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize(
    "case, match",
    [
        ("malformed", r"ijbc_face_tid_mid\.txt:2: expected integers"),
        ("short_lmk", r"ijbc_name_5pts_score\.txt:\d+: expected 12 fields"),
        ("missing_lmk", r"ijbc_face_tid_mid\.txt:3: image '3\.jpg' has no landmarks"),
        ("extra_lmk", r"ijbc_name_5pts_score\.txt:\d+: image '9\.jpg' is not in"),
        ("orphan_template", r"ijbc_template_pair_label\.txt:2: template 777 has no images"),
        ("missing_file", r"ijbc_face_tid_mid\.txt:4: image file .*4\.jpg not found"),
    ],
)
def test_read_ijb_errors(tmp_path, case, match):
    _make_ijb(tmp_path)
    meta = tmp_path / "meta"
    if case == "malformed":
        _rewrite(meta / "ijbc_face_tid_mid.txt", "2.jpg 100 501", "2.jpg 100 x501")
    elif case == "short_lmk":
        with open(meta / "ijbc_name_5pts_score.txt", "a") as f:
            f.write("5.jpg 1 2 3\n")
    elif case == "missing_lmk":
        lines = (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()
        lines = [ln for ln in lines if not ln.startswith("3.jpg")]
        (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    elif case == "extra_lmk":
        with open(meta / "ijbc_name_5pts_score.txt", "a") as f:
            f.write("9.jpg " + " ".join(["1.0"] * 10) + " 0.9\n")
    elif case == "orphan_template":
        _rewrite(meta / "ijbc_template_pair_label.txt", "100 100 1", "100 777 1")
    elif case == "missing_file":
        (tmp_path / "loose_crop" / "4.jpg").unlink()
    with pytest.raises(DataError, match=match):
        read_ijb(tmp_path, "IJBC")


def test_read_ijbb_and_bad_target(tmp_path):
    _make_ijb(tmp_path, t="ijbb", n=4)
    assert len(read_ijb(tmp_path, "IJBB")) == 4
    with pytest.raises(FileNotFoundError, match="ijbc_face_tid_mid"):
        read_ijb(tmp_path, "IJBC")
    with pytest.raises(ValueError, match="IJBB"):
        read_ijb(tmp_path, "megaface")
