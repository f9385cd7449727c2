"""Shared test helpers, as fixtures: image batches, JPEG bytes, free ports, a tiny model, and small on-disk data
(verification sets, an IJB release, a face ``.rec``, an offline Hugging Face cache).

The builders are session-scoped factories (plain functions handed out by a fixture), so fixtures of any scope can
use them: ``def test_x(tmp_path, make_bins): make_bins(tmp_path, ["lfw"])``.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Sequence, Union

import numpy as np
import pytest
import torch

#: a tiny timm model that is not a facezoo model (160x160 input: exercises the resize in extraction)
TINY_MODEL = "test_resnet"


@pytest.fixture(scope="session")
def random_images() -> Callable[..., torch.Tensor]:
    """``random_images(n, size=16, seed=0, smooth=False)`` -> uint8 (n, 3, size, size), deterministic per seed.

    ``smooth=True`` gives smooth colour images (a 7x7 grid upsampled bilinearly): they compress well and survive
    JPEG nearly unchanged; the default is uniform noise (exact through PNG)."""

    def make(n: int, size: int = 16, seed: int = 0, smooth: bool = False) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if not smooth:
            return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
        small = torch.rand(n, 3, 7, 7, generator=g) * 255
        big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
        return big.round().to(torch.uint8)

    return make


@pytest.fixture(scope="session")
def jpeg_bytes() -> Callable[..., bytes]:
    """``jpeg_bytes(image, **save_options)``: PIL's JPEG encoding of a PIL image or an (H, W[, 3]) uint8 array
    (quality 95 unless given), as the insightface tools write them."""
    from PIL import Image

    def encode(image: Union[Image.Image, np.ndarray], **options: Any) -> bytes:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        options.setdefault("quality", 95)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", **options)
        return buf.getvalue()

    return encode


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for torch.distributed rendezvous, or a closed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    """``timm.create_model('test_resnet', num_classes=0)`` in eval mode, seeded: an embedding model in milliseconds."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(TINY_MODEL, num_classes=0).eval()


@pytest.fixture(scope="session")
def make_bins() -> Callable[..., Path]:
    """``make_bins(root, bins=("lfw", "cfp_fp"), pairs_datasets=("agedb_30",), num_pairs=12)``: synthetic
    verification sets in the folder ``root`` (``NAME.bin`` and Hugging Face pair datasets ``NAME/``); returns root."""
    from facezoo.data import synthetic_pairs, write_bin, write_pairs_dataset

    def make(
        root: Path,
        bins: Sequence[str] = ("lfw", "cfp_fp"),
        pairs_datasets: Sequence[str] = ("agedb_30",),
        num_pairs: int = 12,
    ) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(bins):
            images, issame = synthetic_pairs(num_pairs, seed=i, difficulty=0.5)
            write_bin(root / f"{name}.bin", images, issame)
        for i, name in enumerate(pairs_datasets):
            images, issame = synthetic_pairs(num_pairs, seed=7 + i, difficulty=0.5)
            write_pairs_dataset(root / name, images, issame)
        return root

    return make


@pytest.fixture(scope="session")
def make_ijb_release() -> Callable[..., Path]:
    """``make_ijb_release(root, n_subjects=6)``: insightface's IJB-C layout in ``root`` (meta files, loose_crop
    images, 5-point landmarks with faceness scores, template pairs) plus the 1:N gallery / probe CSVs. Each subject
    has a gallery template of 2 medias (2 + 1 images) and probe templates of 2 and 1 + 1 images."""
    from facezoo.data import ARCFACE_TEMPLATE, encode_image
    from facezoo.data.synthetic import render_face

    def make(root: Path, n_subjects: int = 6) -> Path:
        root = Path(root)
        crop, meta = root / "loose_crop", root / "meta"
        crop.mkdir(parents=True)
        meta.mkdir()
        tid_lines, lmk_lines, csv = [], [], {"G1": [], "G2": [], "probe": []}
        tmpl, img = 1, 1
        gallery: Dict[int, list] = {}
        probes: Dict[int, list] = {}
        rng = np.random.default_rng(0)
        for s in range(n_subjects):
            for role, sizes in (("gallery", (2, 1)), ("probe", (2,)), ("probe", (1, 1))):
                for m, k in enumerate(sizes):
                    for _ in range(k):
                        name = f"{img}.jpg"
                        face = render_face(3, 1000 + s, img, difficulty=0.3)
                        (crop / name).write_bytes(encode_image(torch.from_numpy(face).permute(2, 0, 1), format="jpeg"))
                        tid_lines.append(f"{name} {tmpl} {tmpl * 10 + m}")
                        lmk = (ARCFACE_TEMPLATE + rng.normal(0, 0.5, (5, 2))).reshape(-1)
                        lmk_lines.append(name + " " + " ".join(f"{v:.3f}" for v in lmk) + f" {rng.uniform(0.5, 1):.4f}")
                        key = ("G1" if s % 2 == 0 else "G2") if role == "gallery" else "probe"
                        csv[key].append(f"{tmpl},{s},{name}")
                        img += 1
                (gallery if role == "gallery" else probes).setdefault(s, []).append(tmpl)
                tmpl += 1
        pairs = [f"{p} {gallery[g][0]} {int(g == s)}" for s in probes for p in probes[s] for g in gallery]
        (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
        (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
        (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
        for key, fname in (
            ("G1", "ijbc_1N_gallery_G1.csv"),
            ("G2", "ijbc_1N_gallery_G2.csv"),
            ("probe", "ijbc_1N_probe_mixed.csv"),
        ):
            (meta / fname).write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(csv[key]) + "\n")
        return root

    return make


@pytest.fixture(scope="session")
def make_face_records() -> Callable[..., Dict[str, Any]]:
    """``make_face_records(folder, num_identities=3, per_identity=2, size=112)``: an insightface-style
    ``train.rec`` / ``train.idx`` / ``property`` of synthetic JPEG faces in ``folder``; returns
    :func:`facezoo.data.recordio.write_face_records`' summary."""
    from facezoo.data import SyntheticFaces, encode_image
    from facezoo.data.recordio import write_face_records

    def make(folder: Path, num_identities: int = 3, per_identity: int = 2, size: int = 112) -> Dict[str, Any]:
        faces = SyntheticFaces(num_identities, per_identity, seed=0)
        items: Iterable = (
            (encode_image(_resized(im, size), "jpeg", 90), int(label))
            for im, label in (faces[i] for i in range(len(faces)))
        )
        return write_face_records(folder, items, num_classes=num_identities)

    return make


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size:
        return image
    x = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


@pytest.fixture
def hf_offline_cache(tmp_path: Path) -> Callable[..., Dict[str, str]]:
    """``hf_offline_cache(repo_id, folder, repo_type="model")``: put the files of ``folder`` into a Hugging Face
    cache under ``tmp_path`` as the snapshot of ``repo_id`` (``refs/main`` pointing at it), and return the
    environment for a subprocess that resolves ``hf-hub:`` / ``load_dataset`` ids from it with no network
    (``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE``, ``HF_HOME``). Call it again to add more repositories to the same cache.

    ``folder`` may also be a callable that writes the files into the snapshot folder it is given."""
    import shutil

    cache, home = tmp_path / "hf_cache", tmp_path / "hf_home"
    revision = "0" * 40

    def populate(
        repo_id: str, folder: Union[Path, str, Callable[[Path], Any]], repo_type: str = "model"
    ) -> Dict[str, str]:
        repo_dir = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / revision
        if callable(folder):
            snapshot.mkdir(parents=True)
            folder(snapshot)
        else:
            shutil.copytree(folder, snapshot)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
        home.mkdir(exist_ok=True)
        return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(home)}

    return populate
