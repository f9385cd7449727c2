"""Identity folders, Hugging Face datasets (local and streamed), the source factory and format conversion."""

from __future__ import annotations

import datasets
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from facezoo.data import (
    DataError,
    HFFaces,
    HFIterableFaces,
    ImageFolderFaces,
    RecordIOFaces,
    create_face_source,
    encode_image,
    load_bin,
    load_pairs_dataset,
    write_bin,
)
from facezoo.data.convert import convert, hf_to_rec, rec_to_hf
from facezoo.data.recordio import write_face_records


def _hf(ims: torch.Tensor, labels: list[int], classlabel: bool = True) -> datasets.Dataset:
    feats = datasets.Features(
        {
            "img": datasets.Image(),
            "identity": datasets.ClassLabel(num_classes=max(labels) + 2) if classlabel else datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(
        {"img": [{"bytes": encode_image(im, "png"), "path": None} for im in ims], "identity": labels}, features=feats
    )


def test_identity_folders(tmp_path, random_images):
    ims = random_images(5, 20)
    layout = [("bob", 0), ("bob", 1), ("alice", 2), ("carol", 3), ("carol", 4)]
    for name, k in layout:
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(ims[k].permute(1, 2, 0).numpy()).save(tmp_path / name / f"{k}.png")
    (tmp_path / "bob" / "notes.txt").write_text("not an image")
    ds = ImageFolderFaces(tmp_path)
    assert ds.classes == ["alice", "bob", "carol"] and ds.num_classes == 3 and len(ds) == 5
    im, lab = ds[0]
    assert torch.equal(im, ims[2]) and lab == 0
    assert [ds[i][1] for i in range(5)] == [0, 1, 1, 2, 2]
    assert isinstance(create_face_source(tmp_path), ImageFolderFaces)
    (tmp_path / "carol" / "3.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"carol/3\.png"):
        ds[3]
    skip = ImageFolderFaces(tmp_path, on_error="skip")
    assert torch.equal(skip[3][0], ims[4]) and skip.skipped == 1
    with pytest.raises(FileNotFoundError):
        ImageFolderFaces(tmp_path / "missing")


def test_hf_dataset_local_sources(tmp_path, random_images):
    ims = random_images(6, 20, seed=1)
    labels = [0, 2, 1, 2, 0, 1]
    ds = _hf(ims, labels)
    for src in (ds, tmp_path / "disk", tmp_path / "x.parquet"):
        if src == tmp_path / "disk":
            ds.save_to_disk(str(src))
        elif src == tmp_path / "x.parquet":
            ds.to_parquet(str(src))
        hf = HFFaces(src)
        assert len(hf) == 6 and hf.num_classes == 4  # from the ClassLabel feature
        assert hf.image_column == "img" and hf.label_column == "identity"
        for i in (0, 3):
            im, lab = hf[i]
            assert torch.equal(im, ims[i]) and lab == labels[i]
        batch = hf.__getitems__([5, 0, -2])  # one Arrow take for the DataLoader's batch
        assert [lab for _, lab in batch] == [1, 0, 0] and torch.equal(batch[0][0], ims[5])
        assert torch.equal(batch[2][0], ims[4])
    plain = HFFaces(_hf(ims, labels, classlabel=False))
    assert plain.num_classes == 3  # max label + 1
    bad = ds.cast_column("img", datasets.Image(decode=False)).map(
        lambda r, i: {"img": {"bytes": b"junk" if i == 2 else r["img"]["bytes"], "path": None}}, with_indices=True
    )
    with pytest.raises(DataError, match="row 2 column img"):
        HFFaces(bad).__getitems__([0, 2])
    skip = HFFaces(bad, on_error="skip")
    assert [lab for _, lab in skip.__getitems__([1, 2])] == [2, 2] and skip.skipped == 1
    assert isinstance(create_face_source(tmp_path / "disk"), HFFaces)
    with pytest.raises(ValueError, match="Image column"):
        HFFaces(datasets.Dataset.from_dict({"label": [1]}))


def test_hf_streamed_with_workers(tmp_path, random_images):
    ims = random_images(8, 20, seed=2)
    labels = [i % 3 for i in range(8)]
    ds = _hf(ims, labels)
    for k in range(2):  # two parquet shards so two workers each get one
        ds.shard(2, k, contiguous=True).to_parquet(str(tmp_path / f"train-{k}.parquet"))
    stream = HFIterableFaces(str(tmp_path), num_classes=3)
    got = list(stream)
    assert len(got) == 8 and sorted(lab for _, lab in got) == sorted(labels)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    out = list(loader)
    assert len(out) == 8  # each row exactly once across workers
    assert sorted(int(im.sum()) for im, _ in out) == sorted(int(im.sum()) for im in ims)
    (tmp_path / "plain").mkdir()
    _hf(ims, labels, classlabel=False).to_parquet(str(tmp_path / "plain" / "x.parquet"))
    with pytest.raises(ValueError, match="num_classes"):
        HFIterableFaces(str(tmp_path / "plain"))  # int labels, streamed: cannot know the class count


def test_rec_hf_roundtrip_is_lossless(tmp_path, random_images):
    ims = random_images(7, 20, seed=3)
    labels = [0, 0, 1, 2, 2, 2, 3]
    write_face_records(tmp_path / "rec", ((encode_image(im, "jpeg"), lab) for im, lab in zip(ims, labels)))
    info = rec_to_hf(tmp_path / "rec", tmp_path / "hf", format="parquet", progress=False)
    assert info == {"images": 7, "num_classes": 4, "dst": str(tmp_path / "hf")}
    hf = HFFaces(tmp_path / "hf")
    rec = RecordIOFaces(tmp_path / "rec")
    assert hf.num_classes == 4 and len(hf) == 7
    for i in range(7):
        assert torch.equal(hf[i][0], rec[i][0]) and hf[i][1] == rec[i][1]
    # back to .rec, from a shuffled HF dataset: regrouped by identity, bytes identical
    shuffled = datasets.load_dataset(str(tmp_path / "hf"), split="train").shuffle(seed=0)
    shuffled.save_to_disk(str(tmp_path / "shuf"))
    hf_to_rec(tmp_path / "shuf", tmp_path / "back", progress=False)
    back = RecordIOFaces(tmp_path / "back")
    assert [back[i][1] for i in range(7)] == labels and back.header is not None
    assert sorted(back.read_record(i)[1] for i in range(7)) == sorted(rec.read_record(i)[1] for i in range(7))
    arrow = rec_to_hf(tmp_path / "rec", tmp_path / "hf_arrow", format="arrow", progress=False)
    assert len(HFFaces(arrow["dst"])) == 7


def test_convert_cli_and_bin_pairs(tmp_path, random_images):
    from facezoo.cli import main

    ims = random_images(4, 20, seed=4)
    write_face_records(tmp_path / "rec", ((encode_image(im, "png"), lab) for im, lab in zip(ims, [0, 1, 1, 2])))
    assert main(["data", "convert", str(tmp_path / "rec" / "train.rec"), str(tmp_path / "hf"), "--quiet"]) == 0
    assert main(["data", "convert", str(tmp_path / "hf"), str(tmp_path / "rec2"), "--quiet"]) == 0
    assert (tmp_path / "rec2" / "train.rec").read_bytes() == (tmp_path / "rec" / "train.rec").read_bytes()
    big = torch.nn.functional.interpolate(ims.float(), size=(112, 112)).to(torch.uint8)
    write_bin(tmp_path / "v.bin", big, [True, False], format="png")
    assert main(["data", "convert", str(tmp_path / "v.bin"), str(tmp_path / "pairs"), "--quiet"]) == 0
    images, issame = load_pairs_dataset(tmp_path / "pairs")
    assert torch.equal(images, big) and issame.tolist() == [True, False]
    convert(tmp_path / "pairs", tmp_path / "v2.bin", progress=False)
    images2, issame2 = load_bin(tmp_path / "v2.bin")
    assert torch.equal(images2, big) and issame2.tolist() == [True, False]
