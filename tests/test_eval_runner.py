"""The evaluation runner and ``facezoo eval`` end to end on fixtures built here: tiny .bin, HF pairs, IJB folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import facezoo  # noqa: F401
from facezoo.cli import main
from facezoo.data import encode_image
from facezoo.data.synthetic import synthetic_pairs
from facezoo.eval import extract, ijb, runner, verification
from facezoo.eval.report import markdown_table
from facezoo.models import create_model

MODEL = "test_resnet"  # a tiny non-facezoo timm model (160x160 input: exercises the resize)


@pytest.fixture(scope="module")
def bins(tmp_path_factory, make_bins):
    # lfw.bin, cfp_fp.bin and agedb_30/ (a HF dataset of image pairs)
    return make_bins(tmp_path_factory.mktemp("bins"))


@pytest.fixture(scope="module")
def ijb_root(tmp_path_factory, make_ijb_release):
    return make_ijb_release(tmp_path_factory.mktemp("ijb") / "IJBC")


def test_extract_matches_manual_flip_tta(tiny_model):
    images, _ = synthetic_pairs(6, seed=1)
    emb = extract.extract_embeddings(tiny_model, images, batch_size=5, progress=False)
    x = torch.nn.functional.interpolate(images.float(), size=(160, 160), mode="bilinear", antialias=True)
    x = x.round().clamp(0, 255) / 255  # resized as uint8, as training's in-memory cache is
    cfg = timm.data.resolve_data_config({}, model=tiny_model)
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = (tiny_model(x).double() + tiny_model(x.flip(3)).double()).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert emb.dtype == np.float64 and emb.shape == (12, tiny_model.num_features)


def test_evaluation_feeds_the_pixels_training_fed():
    """A 32x32 model sees the same input for 112x112 faces in training (the synthetic cache + DeviceAugment) and in
    evaluation. Resizing 112 -> 32 without antialiasing (what evaluation once did) gives other pixels."""
    from facezoo.data import SyntheticFaces
    from facezoo.train.augment import DeviceAugment
    from facezoo.train.config import AugmentConfig
    from facezoo.train.data import render_synthetic

    model = create_model(  # as the engine builds a 32x32 model (the quickstart's)
        "iresnet18_gwp",
        layers=[1, 1, 1, 1],
        widths=[8, 8, 8, 8],
        img_size=32,
        pretrained_cfg_overlay=dict(input_size=(3, 32, 32)),
    ).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    faces = SyntheticFaces(3, 2, seed=4)
    cache = render_synthetic(faces, (32, 32), workers=0, progress=False)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    train_input = DeviceAugment(AugmentConfig(), (3, 32, 32), mean, std, seed=0, training=False)(
        cache, torch.arange(len(faces)), epoch=0
    )
    raw = torch.stack([faces[i][0] for i in range(len(faces))])
    assert raw.shape[-1] == 112
    extract.extract_features(model, raw, batch_size=len(faces), flip=False, progress=False)
    torch.testing.assert_close(seen[0], train_input, atol=1e-5, rtol=0)
    aliased = torch.nn.functional.interpolate(raw.float() / 255, size=(32, 32), mode="bilinear")
    aliased = (aliased - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert (aliased - train_input).abs().mean() > 0.01  # 0.03 here: about 4 grey levels on average


def test_non_2d_model_output_is_a_clear_error():
    m = timm.create_model(MODEL, num_classes=0, global_pool="").eval()  # (B, C, H, W) output
    images, _ = synthetic_pairs(1, seed=1)
    with pytest.raises(ValueError, match=r"model output has shape \(2, \d+, \d+, \d+\), expected 2-D"):
        extract.extract_features(m, images, progress=False)


def test_run_verification_sets_in_process(tiny_model, bins):
    sets = runner.load_verification_sets(bins, ["lfw", "agedb_30"], progress=False)
    tiny_model.train()
    res = runner.run_verification_sets(tiny_model, sets, batch_size=16, progress=False)
    assert tiny_model.training  # the training loop's mode is restored
    for name, (images, issame) in sets.items():
        tiny_model.eval()
        emb = extract.extract_embeddings(tiny_model, images, batch_size=16, progress=False)
        assert res[name]["fold_accuracies"] == verification.evaluate(emb, issame)["fold_accuracies"]
        assert res[name]["xnorm"] > 0 and len(res[name]["roc"]["fpr"]) == 400


class _NaNForBrightImages(torch.nn.Module):
    """Embeds the mean colour; images whose two centre pixels of the top row sum above ``limit`` give NaN rows (the
    same rows for an image and its horizontal flip)."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.scale = torch.nn.Parameter(torch.ones(()))

    @staticmethod
    def key(x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return x[:, 0, 0, w // 2 - 1] + x[:, 0, 0, w // 2]

    def forward(self, x):
        emb = x.mean(dim=(2, 3)) * self.scale
        return torch.where((self.key(x) > self.limit)[:, None], float("nan"), emb)


def test_non_finite_embeddings_are_refused_naming_the_set_and_count(bins):
    from facezoo.errors import DataError

    sets = runner.load_verification_sets(bins, ["lfw"], progress=False)
    images = sets["lfw"][0]
    keys = _NaNForBrightImages.key((images.float() / 255 - 0.5) / 0.5).unique()  # what extraction feeds the model
    limit = float(keys[len(keys) // 2 - 1] + keys[len(keys) // 2]) / 2  # between two values: no rounding doubt
    bad = int((_NaNForBrightImages.key((images.float() / 255 - 0.5) / 0.5) > limit).sum())
    assert 0 < bad < len(images)
    with pytest.raises(DataError, match=rf"^lfw: the embeddings of {bad} of {len(images)} images are not finite"):
        runner.run_verification_sets(_NaNForBrightImages(limit), sets, batch_size=5, progress=False)
    # the protocols refuse non-finite input themselves (the Python API, not only the runner)
    emb = np.ones((8, 4))
    emb[3, 1] = np.inf
    with pytest.raises(DataError, match=r"verification: 1 of 4 pairs have non-finite embeddings"):
        verification.evaluate(emb, [True, False, True, False], nfolds=2)
    feats = np.ones((3, 4), np.float32)
    feats[0, 0] = np.nan
    with pytest.raises(DataError, match=r"IJB: 1 of 3 image features are not finite"):
        ijb.evaluate(feats, np.array([1, 1, 2]), np.array([1, 1, 2]), np.array([1]), np.array([2]), np.array([0]))


def test_missing_set_names_paths_and_default_finds_every_set(bins, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"no verification set 'calfw' \(calfw.bin, calfw/ or calfw.parquet\); "
        r"found agedb_30, cfp_fp, lfw",
    ):
        runner.load_verification_sets(bins, ["calfw"])
    with pytest.raises(FileNotFoundError, match="did you mean 'cfp_fp'"):
        runner.load_verification_sets(bins, ["cfp-fp"])
    assert list(runner.load_verification_sets(bins, progress=False)) == ["agedb_30", "cfp_fp", "lfw"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no verification sets in this folder"):
        runner.load_verification_sets(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder of verification sets"):
        runner.load_verification_sets(tmp_path / "missing")


def test_cli_end_to_end(bins, ijb_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            MODEL,
            "--bins",
            str(bins),
            "--targets",
            "lfw,cfp_fp,agedb_30",
            "--ijb",
            str(ijb_root),
            "--ijb-target",
            "IJBC",
            "--ijb-modes",
            "default,no_faceness",
            "--ijb-1n",
            "--batch-size",
            "16",
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"] == MODEL and doc["facezoo_version"] == facezoo.__version__ and doc["date"]
    assert set(doc["verification"]) == {"lfw", "cfp_fp", "agedb_30"}
    accs = [doc["verification"][n]["accuracy"] for n in ("lfw", "cfp_fp", "agedb_30")]
    assert doc["verification_average"] == pytest.approx(np.mean(accs))
    assert set(doc["ijb"]["modes"]) == {"default", "no_faceness"} and doc["ijb"]["flip"] is True
    tar = doc["ijb"]["modes"]["default"]["tar_at_far"]
    assert list(tar) == ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"] and all(0 <= v <= 1 for v in tar.values())
    assert set(doc["ijb"]["one_to_n"]) == {"mixed", "G1", "G2"}
    assert doc["ijb"]["num_pairs"] == 12 * 6 and doc["ijb"]["num_images"] == 6 * 7
    md = (out / "results.md").read_text()
    assert "| Model | LFW | CFP-FP | AgeDB-30 | Average |" in md
    assert f"{100 * doc['verification']['lfw']['accuracy']:.2f} ± " in md
    assert "IJB-C TAR@FAR=1e-6" in md and "| G1 |" in md
    assert md == markdown_table(doc)
    assert (out / "roc.png").stat().st_size > 5000 and (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "results.json" in capsys.readouterr().out


def test_checkpoint_roundtrip_and_ijb_numbers(tiny_model, bins, ijb_root, tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(ckpt))
    loaded = create_model(MODEL, checkpoint=str(ckpt), num_classes=0).eval()
    images, issame = synthetic_pairs(4, seed=3)
    np.testing.assert_allclose(
        extract.extract_embeddings(loaded, images, progress=False),
        extract.extract_embeddings(tiny_model, images, progress=False),
        atol=1e-6,
    )

    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                MODEL,
                "--checkpoint",
                str(ckpt),
                "--ijb",
                str(ijb_root),
                "--output-dir",
                str(out),
                "--quiet",
                "--ijb-1n",
            ]
        )
        == 0
    )
    doc = json.loads((out / "results.json").read_text())
    from facezoo.data.ijb import IJBAlignedImages, read_ijb

    meta = read_ijb(ijb_root, "IJBC")
    feats, flips = extract.extract_features(tiny_model, IJBAlignedImages(meta), progress=False)
    ref = ijb.evaluate(
        feats, meta.templates, meta.medias, meta.t1, meta.t2, meta.labels, faceness=meta.faceness, flip_features=flips
    )
    for far, tar in ref["tar_at_far"].items():
        assert doc["ijb"]["modes"]["default"]["tar_at_far"][f"1e{int(np.log10(far))}"] == pytest.approx(tar)
    mixed = doc["ijb"]["one_to_n"]["mixed"]
    assert 0 <= mixed["cmc"]["1"] <= mixed["cmc"]["5"] <= 1


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facezoo eval: error: "), err
    return err[0]


def test_cli_bad_arguments(bins, tmp_path, capsys):
    assert main(["eval", MODEL]) == 2
    assert "--bins DIR" in _one_error_line(capsys)
    assert main(["eval", MODEL, "--bins", str(bins), "--ijb-modes", "fast"]) == 2
    assert "unknown --ijb-modes" in _one_error_line(capsys)
    assert main(["eval", MODEL, "--bins", str(bins), "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth: no such checkpoint file" in _one_error_line(capsys)


def test_odd_bin_and_bad_ijb_meta(tmp_path, ijb_root, capsys):
    import pickle
    import shutil

    bad = tmp_path / "bad"
    bad.mkdir()
    images, issame = synthetic_pairs(2, seed=0)
    with open(bad / "lfw.bin", "wb") as f:  # 3 images for 2 pairs
        pickle.dump(([encode_image(im) for im in images[:3]], [True, False]), f)
    assert (
        main(["eval", MODEL, "--bins", str(bad), "--targets", "lfw", "--output-dir", str(tmp_path / "o"), "--quiet"])
        == 2
    )
    assert "lfw.bin" in capsys.readouterr().err

    broken = tmp_path / "IJBC"
    shutil.copytree(ijb_root, broken)
    pairs = broken / "meta" / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    lines[4] = "9999 1 0"
    pairs.write_text("\n".join(lines) + "\n")
    assert main(["eval", MODEL, "--ijb", str(broken), "--output-dir", str(tmp_path / "o"), "--quiet"]) == 2
    assert "ijbc_template_pair_label.txt:5: template 9999 has no images" in capsys.readouterr().err
