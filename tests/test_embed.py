"""``facezoo embed``: every image of a face source to a Parquet file that ``datasets`` reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from facezoo.cli import main
from facezoo.errors import DataError
from facezoo.eval.embed import embed_to_parquet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("iresnet18", widths=(8, 16, 32, 64), embed_dim=16).eval()


@pytest.fixture
def faces(tmp_path, random_images, jpeg_bytes):
    """``faces(kind)``: 'identities' (2 folders of 3 JPEGs, one file in b/ is not an image) or 'plain' (5 JPEGs)."""

    def make(kind: str) -> Path:
        root = tmp_path / kind
        images = random_images(6, size=112, seed=3, smooth=True).permute(0, 2, 3, 1).numpy()
        if kind == "plain":
            root.mkdir()
            for i in range(5):
                (root / f"{i}.jpg").write_bytes(jpeg_bytes(images[i]))
            return root
        for i, ident in enumerate(["a", "a", "a", "b", "b", "b"]):
            (root / ident).mkdir(parents=True, exist_ok=True)
            (root / ident / f"{i}.jpg").write_bytes(jpeg_bytes(images[i]))
        (root / "b" / "4.jpg").write_bytes(b"not a jpeg")
        return root

    return make


def _expected(model, folder: Path, rel: str, flip: bool = True) -> np.ndarray:
    from facezoo.data.image import decode_rgb

    x = decode_rgb((folder / rel).read_bytes())[None].float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        y = model(x) + (model(x.flip(3)) if flip else 0)
    return y[0].numpy()


def test_identity_folders_skip_count_and_datasets_reads_it(model, faces, tmp_path, caplog):
    import datasets

    root, out = faces("identities"), tmp_path / "emb.parquet"
    info = embed_to_parquet(model, root, out, on_error="skip", batch_size=4, device="cpu", progress=False)
    assert (info["rows"], info["skipped"], info["dim"]) == (5, 1, 16)
    assert "skipped 1 unreadable images" in caplog.text and "4.jpg" in caplog.text
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert ds.column_names == ["path", "label", "embedding"]
    assert ds["path"] == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/3.jpg", "b/5.jpg"] and ds["label"] == [0, 0, 0, 1, 1]
    emb = np.asarray(ds["embedding"], dtype=np.float32)
    assert emb.dtype == np.float32 and emb.shape == (5, 16)
    np.testing.assert_allclose(emb[3], _expected(model, root, "b/3.jpg"), rtol=1e-4, atol=1e-4)


def test_unreadable_image_stops_with_its_path(model, faces, tmp_path):
    out = tmp_path / "emb.parquet"
    with pytest.raises(DataError, match=r"b/4\.jpg"):
        embed_to_parquet(model, faces("identities"), out, batch_size=4, device="cpu", progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_plain_folder_no_flip_normalized(model, faces, tmp_path):
    import pyarrow.parquet as pq

    root, out = faces("plain"), tmp_path / "emb.parquet"
    embed_to_parquet(model, root, out, normalize=True, flip=False, batch_size=2, device="cpu", progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["path", "embedding"] and table.num_rows == 5
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    want = F.normalize(torch.from_numpy(_expected(model, root, "2.jpg", flip=False))[None])[0].numpy()
    np.testing.assert_allclose(emb[2], want, rtol=1e-4, atol=1e-5)


def test_rec_rows_are_indexed_with_labels(model, tmp_path, make_face_records):
    import pyarrow.parquet as pq

    make_face_records(tmp_path / "rec", num_identities=2, per_identity=2)
    out = tmp_path / "emb.parquet"
    embed_to_parquet(model, tmp_path / "rec", out, batch_size=3, device="cpu", progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["index", "label", "embedding"]
    assert table.column("index").to_pylist() == [0, 1, 2, 3] and table.column("label").to_pylist() == [0, 0, 1, 1]


def test_cli_with_a_checkpoint(model, faces, tmp_path, capsys):
    import pyarrow.parquet as pq

    ckpt = tmp_path / "m.safetensors"
    tiny = timm.create_model("test_resnet", num_classes=0)
    save_file(tiny.state_dict(), str(ckpt))
    out = tmp_path / "emb.parquet"
    argv = ["embed", "test_resnet", str(faces("plain")), "--output", str(out), "--checkpoint", str(ckpt)]
    assert main(argv + ["--no-flip", "--batch-size", "2", "--device", "cpu", "--quiet"]) == 0
    assert f"wrote 5 embeddings ({tiny.num_features}-d) to {out}" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == 5
    assert main(["embed", "test_resnet", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_write_the_single_process_file(faces, tmp_path, free_port):
    import pyarrow.parquet as pq

    root = faces("plain")
    ckpt = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    tiny = timm.create_model("test_resnet", num_classes=0).eval()
    save_file(tiny.state_dict(), str(ckpt))
    out = tmp_path / "two.parquet"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port), "-m", "facezoo", "embed", "test_resnet", str(root), "--output", str(out),
           "--checkpoint", str(ckpt), "--batch-size", "2", "--device", "cpu", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one.parquet"
    embed_to_parquet(tiny, root, one, batch_size=3, device="cpu", progress=False)
    a, b = pq.read_table(out), pq.read_table(one)
    assert a.column("path").to_pylist() == b.column("path").to_pylist() == [f"{i}.jpg" for i in range(5)]
    np.testing.assert_allclose(
        np.asarray(a.column("embedding").to_pylist()), np.asarray(b.column("embedding").to_pylist()), rtol=1e-4,
        atol=1e-4,
    )  # fmt: skip
    assert not list(tmp_path.glob("*.partial"))
