"""Export folders (``facezoo.hub.save_pretrained``, ``facezoo export hub``) and their model cards."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import timm
import torch
from hub_helpers import REPO_ROOT, eval_results, small_model, write_results
from huggingface_hub import ModelCard
from timm.models import PretrainedCfg

import facezoo
from facezoo.cli import main
from facezoo.errors import ConfigError
from facezoo.eval.report import markdown_table
from facezoo.hub import render_model_card, save_pretrained
from facezoo.hub.card import CARD_MARKER, GWP_CITATION, template_path
from facezoo.models.profile import model_stats

HEADS = ["", "_gap", "_gwp", "_gdc"]


def _config(folder):
    return json.loads((folder / "config.json").read_text())


# --- the folder and its round trip through timm --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["insightface", "adaface"])
@pytest.mark.parametrize("stem", ["", "_k7"])
@pytest.mark.parametrize("head", HEADS)
def test_export_loads_back_through_local_dir_with_identical_embeddings(tmp_path, head, stem, layout):
    """Every head, stem and layout. Built for 32x32 input (a 2x2 map: 12x less compute on 2 CPU cores), which also
    checks that a non-default kwarg (``img_size``) is recorded; the 112x112 defaults round-trip in the tests below."""
    name = f"iresnet18{head}{stem}"
    model = small_model(name, layout=layout, img_size=32)
    out = save_pretrained(model, tmp_path / "pub")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".pub.*"))  # the temporary folder was renamed, not left behind
    cfg = _config(out)
    assert cfg["architecture"] == name and cfg["num_classes"] == 0 and cfg["num_features"] == 512
    assert cfg["model_args"]["layout"] == layout and cfg["model_args"]["embed_dim"] == 512
    assert cfg["model_args"]["img_size"] == [32, 32]
    assert cfg["facezoo"] == {
        "version": facezoo.__version__,
        "family": "iresnet",
        "head": model.pool_type,
        "stem_kernel": 7 if stem else 3,
        "layout": layout,
        "embed_dim": 512,
        "evaluated": False,
    }
    PretrainedCfg(**cfg["pretrained_cfg"])  # nothing timm would reject
    with open(out / "model.safetensors", "rb") as f:
        assert not zipfile.is_zipfile(f)  # safetensors, not a torch (pickle) archive
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.layout == layout and loaded.pool_type == model.pool_type
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_non_default_kwargs_round_trip(tmp_path):
    model = small_model("iresnet18", embed_dim=128, num_classes=10)
    out = save_pretrained(model, tmp_path / "pub")
    cfg = _config(out)
    assert cfg["model_args"]["embed_dim"] == 128 and cfg["num_classes"] == 10
    assert cfg["facezoo"]["embed_dim"] == 128
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert loaded(x).shape == (1, 10)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(
            loaded.forward_head(loaded.forward_features(x), pre_logits=True),
            model.forward_head(model.forward_features(x), pre_logits=True),
            rtol=0,
            atol=0,
        )


def test_written_atomically_and_not_over_an_existing_folder(tmp_path, monkeypatch):
    model = small_model("iresnet18_gap")
    out = tmp_path / "pub"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="pub: folder exists and is not empty; pass overwrite=True"):
        save_pretrained(model, out)
    assert (out / "notes.txt").read_text() == "keep me"

    def broken_save(self, path):  # the card write fails after the weights and config are written
        raise OSError("disk full")

    monkeypatch.setattr(ModelCard, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the old folder is untouched
    monkeypatch.undo()
    save_pretrained(model, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub"]


# --- the model card ------------------------------------------------------------------------------------------------


def test_card_front_matter_model_index_and_body(tmp_path):
    results = write_results(tmp_path / "eval_out" / "results.json")
    doc = json.loads(results.read_text())
    training = {
        "margin": {"name": "combined", "s": 64.0, "m3": 0.4},
        "epochs": 20,
        "hub_token": "hf_secret",
        "data": {"train": tmp_path / "webface4m"},
    }
    model = small_model("iresnet18_gwp_k7")
    out = save_pretrained(
        model,
        tmp_path / "pub",
        results=results,
        training=training,
        base_model="my-org/base",
        datasets=["webface4m"],
        license="apache-2.0",
    )
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-feature-extraction"
    assert data.tags == ["face-recognition", "timm", "facezoo", "gwp"]
    assert data.license == "apache-2.0" and data.datasets == ["webface4m"] and data.base_model == "my-org/base"
    by_set = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    for key, name in (
        ("lfw", "LFW"),
        ("cfp_fp", "CFP-FP"),
        ("agedb_30", "AgeDB-30"),
        ("calfw", "CALFW"),
        ("cplfw", "CPLFW"),
    ):
        assert by_set[(name, "accuracy")] == round(100 * doc["verification"][key]["accuracy"], 2)
    for far in ("1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"):  # the default IJB mode
        assert by_set[("IJB-C", f"TAR@FAR={far}")] == round(100 * doc["ijb"]["modes"]["default"]["tar_at_far"][far], 2)
    assert len(data.eval_results) == 5 + 6
    assert {r.task_type for r in data.eval_results} == {"image-feature-extraction"}
    # body: usage, input convention, size from `facezoo models`, recipe, the paper-layout table, the GWP citation
    stats = model_stats("iresnet18_gwp_k7")
    body = card.text
    assert CARD_MARKER in body and 'timm.create_model("hf-hub:ORG/NAME", pretrained=True)' in body
    assert "RGB" in body and "112x112" in body and "mean = std = 0.5" in body and "5-point" in body
    assert "(38.2946, 51.6963)" in body  # the ArcFace template
    assert f"| parameters | {stats.params / 1e6:.2f} M" in body and f"| GFLOPs | {stats.gflops:.2f} at" in body
    assert "margin:\n  name: combined\n  s: 64.0" in body and "epochs: 20" in body
    assert "hf_secret" not in text and "hub_token: <redacted>" in body
    assert markdown_table(doc).strip() in body
    assert "no_faceness" in body  # every IJB mode in the table; the model-index holds the default one
    assert GWP_CITATION in body and "Revisiting Linearization of Spatial Maps" in body
    assert _config(out)["facezoo"]["base_model"] == "my-org/base" and _config(out)["facezoo"]["evaluated"] is True


def test_unevaluated_card_says_so_and_has_no_model_index(tmp_path):
    out = facezoo.hub.save_pretrained(small_model("iresnet18_gap"), tmp_path / "pub")
    text = (out / "README.md").read_text()
    front_matter = text.split("---\n")[1]
    assert "model-index" not in front_matter and ModelCard.load(out / "README.md").data.eval_results is None
    assert "**This model is unevaluated.**" in text
    assert "Citation" not in text  # not a GWP model
    assert "tags:\n- face-recognition\n- timm\n- facezoo\n- gap\n" in text


def test_card_for_ijbb_only_results_and_a_fine_tune_from_a_path():
    doc = eval_results(target="IJBB")
    del doc["verification"], doc["verification_average"]
    card = render_model_card(small_model("iresnet18"), doc, base_model="runs/pretrain/export", repo_id="my-org/x")
    assert {r.dataset_name for r in card.data.eval_results} == {"IJB-B"}
    assert card.data.model_name == "my-org/x" and 'create_model("hf-hub:my-org/x"' in card.text
    assert card.data.base_model is None  # a local path is no Hub base_model; the body still names it
    assert "Fine-tuned from `runs/pretrain/export`" in card.text
    assert "flatten-head" in card.data.tags


def test_results_of_another_model_are_flagged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="facezoo.hub.export"):
        save_pretrained(small_model("iresnet18_gap", img_size=32), tmp_path / "pub", results=eval_results("iresnet50"))
    assert "the results evaluated 'iresnet50', but the exported model is 'iresnet18_gap'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="facezoo.hub.export"):
        save_pretrained(
            small_model("iresnet18_gap", img_size=32),
            tmp_path / "pub2",
            results=eval_results("local-dir:runs/r18/export"),
        )
    assert "the results evaluated" not in caplog.text


def test_cli_export_hub(tmp_path, capsys):
    model = small_model("iresnet18_gdc")
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    results = write_results(tmp_path / "eval_out" / "results.json", eval_results("iresnet18_gdc"))
    (tmp_path / "recipe.yaml").write_text("margin: arcface\nepochs: 20\n")
    rc = main(
        [
            "export",
            "hub",
            "iresnet18_gdc",
            "--checkpoint",
            str(tmp_path / "backbone.pth"),
            "--results",
            str(results),
            "--training",
            str(tmp_path / "recipe.yaml"),
            "--dataset",
            "webface4m",
            "--output",
            str(tmp_path / "pub"),
        ]
    )
    assert rc == 0
    assert f"wrote {tmp_path / 'pub'}/: model.safetensors" in capsys.readouterr().out
    loaded = timm.create_model(f"local-dir:{tmp_path / 'pub'}", pretrained=True).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    card = ModelCard.load(tmp_path / "pub" / "README.md")
    assert card.data.datasets == ["webface4m"] and "margin: arcface" in card.text and card.data.eval_results


# --- the template ships in the wheel -------------------------------------------------------------------------------


@pytest.mark.slow  # builds and installs a wheel (10-25 s on 2 cores)
def test_template_is_package_data_of_the_wheel(tmp_path):
    """Build a wheel from a copy of the sources, install it into a bare folder, render a card from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "facezoo", src / "facezoo", ignore=ignore)
    shutil.copytree(REPO_ROOT / "hub_cards", src / "hub_cards", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    isolation = ["--no-build-isolation"] if _can_build_without_download() else []  # else pip fetches setuptools
    subprocess.run(
        [*pip, "wheel", "--no-deps", *isolation, "-q", str(src), "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("facezoo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "facezoo/hub_cards/model_card.md" in names
    license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))  # PEP 639 location
    assert zipfile.ZipFile(wheel).read(license_file) == (REPO_ROOT / "LICENSE").read_bytes()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    _check_sdist(src, tmp_path / "sdist")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    script = (
        "import facezoo, timm\n"
        "from facezoo.hub import render_model_card\n"
        "from facezoo.hub.card import template_path\n"
        f"assert facezoo.__file__.startswith({str(tmp_path / 'site')!r}), facezoo.__file__\n"
        f"assert str(template_path()).startswith({str(tmp_path / 'site')!r}), template_path()\n"
        "card = render_model_card(timm.create_model('iresnet18_gwp', device='meta'), repo_id='my-org/x')\n"
        "print(card)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "library_name: timm" in proc.stdout and CARD_MARKER in proc.stdout and "hf-hub:my-org/x" in proc.stdout
    assert template_path() == REPO_ROOT / "hub_cards" / "model_card.md"  # a checkout renders its own templates


def _check_sdist(src, out) -> None:
    """The sdist (built through setuptools' PEP 517 hook, as ``python -m build --sdist`` does) has the license and the
    card templates."""
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(out / proc.stdout.split()[-1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "hub_cards/model_card.md", "pyproject.toml", "setup.py"} <= names


def _can_build_without_download() -> bool:
    """The installed setuptools can build a wheel (it has bdist_wheel since 70.1; before, with the wheel package)."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None
