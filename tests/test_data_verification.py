"""Verification sets: insightface .bin (safe unpickling) and Hugging Face pair datasets."""

from __future__ import annotations

import builtins
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facezoo.data import DataError, UnsafePickleError, load_bin, load_pairs_dataset, write_bin, write_pairs_dataset


def test_write_load_bin_roundtrip_png_exact(tmp_path, random_images):
    ims = random_images(6, 112, smooth=True)
    write_bin(tmp_path / "x.bin", ims, [True, False, True], format="png")
    images, issame = load_bin(tmp_path / "x.bin")
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 112, 112)
    assert issame.dtype == torch.bool and issame.tolist() == [True, False, True]
    assert torch.equal(images, ims)


def test_load_bin_is_rgb_not_bgr(tmp_path, jpeg_bytes):
    # A file made the insightface way (PIL-encoded JPEG bytes, protocol 2 from Python 3 -> _codecs.encode).
    red = np.zeros((112, 112, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((112, 112, 3), np.uint8)
    blue[..., 2] = 220
    with open(tmp_path / "rb.bin", "wb") as f:
        pickle.dump(([jpeg_bytes(red), jpeg_bytes(blue)], [False]), f, protocol=2)
    images, issame = load_bin(tmp_path / "rb.bin")
    assert images[0, 0].float().mean() > 200 and images[0, 2].float().mean() < 30
    assert images[1, 2].float().mean() > 200 and images[1, 0].float().mean() < 30
    assert issame.tolist() == [False]


def test_load_bin_python2_pickle(tmp_path, jpeg_bytes):
    # Hand-assembled protocol-2 pickle as Python 2 writes it: str payloads (BINSTRING), NEWTRUE/NEWFALSE.
    ims = [jpeg_bytes(np.full((112, 112, 3), v, np.uint8)) for v in (10, 200, 90, 90)]
    body = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<I", len(b)) + b for b in ims) + b"e"
    body += b"]q\x01(\x88\x89e\x86q\x02."
    (tmp_path / "py2.bin").write_bytes(body)
    images, issame = load_bin(tmp_path / "py2.bin")
    assert images.shape == (4, 3, 112, 112)
    assert issame.tolist() == [True, False]
    assert abs(images[1].float().mean().item() - 200) < 3


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (self.target, "w"))


def test_malicious_bin_is_refused_and_runs_nothing(tmp_path):
    control = tmp_path / "control_created"
    pickle.loads(pickle.dumps(_Evil(str(control))))  # proves the payload really creates a file when unpickled
    assert control.exists()

    target = tmp_path / "pwned"
    payload = ([_Evil(str(target)), b"x"], [True])
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafePickleError, match=r"evil\.bin.*references io\.open"):
        load_bin(tmp_path / "evil.bin")
    assert not target.exists()


def test_bin_with_numpy_array_is_refused(tmp_path):
    (tmp_path / "np.bin").write_bytes(pickle.dumps(([b"a", b"b"], np.array([True]))))
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_bin(tmp_path / "np.bin")


def test_bin_errors_name_the_file(tmp_path, random_images, jpeg_bytes):
    im = jpeg_bytes(np.zeros((112, 112, 3), np.uint8))
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([im, im, im], [True])))
    with pytest.raises(ValueError, match=r"odd\.bin"):
        load_bin(tmp_path / "odd.bin")
    (tmp_path / "mismatch.bin").write_bytes(pickle.dumps(([im, im], [True, False])))
    with pytest.raises(ValueError, match=r"mismatch\.bin"):
        load_bin(tmp_path / "mismatch.bin")
    (tmp_path / "trunc.bin").write_bytes(pickle.dumps(([im, im], [True]))[:100])
    with pytest.raises(DataError, match=r"trunc\.bin"):
        load_bin(tmp_path / "trunc.bin")
    (tmp_path / "garbage.bin").write_bytes(pickle.dumps(([im, b"not an image"], [True])))
    with pytest.raises(DataError, match=r"garbage\.bin: image 1"):
        load_bin(tmp_path / "garbage.bin")
    with pytest.raises(ValueError, match="pairs"):
        write_bin(tmp_path / "w.bin", random_images(3, 112, smooth=True), [True])


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_pairs_dataset_roundtrip(tmp_path, fmt, random_images):
    ims = random_images(4, 112, seed=3, smooth=True)
    path = tmp_path / ("pairs" if fmt == "arrow" else "pairs.parquet")
    write_pairs_dataset(path, ims, [False, True], format=fmt)
    images, issame = load_pairs_dataset(path)
    assert torch.equal(images, ims)
    assert issame.tolist() == [False, True]


def test_pairs_dataset_custom_columns_and_split(tmp_path, random_images):
    import datasets

    ims = random_images(2, 112, seed=5, smooth=True)
    arr = ims.permute(0, 2, 3, 1).numpy()
    feats = datasets.Features({"left": datasets.Image(), "right": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(
        {"left": [Image.fromarray(arr[0])], "right": [Image.fromarray(arr[1])], "label": [1]}, features=feats
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    images, issame = load_pairs_dataset(tmp_path / "dd", split="test")
    assert images.shape == (2, 3, 112, 112) and issame.tolist() == [True]
    with pytest.raises(KeyError, match="train"):
        load_pairs_dataset(tmp_path / "dd", split="train")
