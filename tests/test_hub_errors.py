"""Bad input to export and push: one clear error naming the file or the field, before anything is written or sent;
from the command line, one stderr line and exit code 2."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
from hub_helpers import eval_results, small_model, write_results
from huggingface_hub import HfApi

from facezoo.cli import main
from facezoo.errors import CheckpointError, ConfigError, HubError, MissingPathError, UnknownNameError
from facezoo.hub import push, save_pretrained
from facezoo.hub.export import check_export_folder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return save_pretrained(small_model("iresnet18_gap", img_size=32), tmp_path_factory.mktemp("e") / "pub")


@pytest.fixture
def copy(export_dir, tmp_path):
    """A fresh copy of the export folder to break."""
    return shutil.copytree(export_dir, tmp_path / "pub")


@pytest.fixture
def hub_calls(monkeypatch):
    """Every HfApi call is recorded (and answered 'no such file'); nothing reaches the network."""
    calls = []

    def recorder(name):
        def call(self, *args, **kwargs):
            calls.append(name)
            return False if name == "file_exists" else None

        return call

    for name in (
        "create_repo",
        "upload_folder",
        "file_exists",
        "create_collection",
        "add_collection_item",
        "create_branch",
    ):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return calls


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def _cli_error(argv, capsys) -> str:
    """Run the CLI in-process; it must fail with exit code 2 and exactly one stderr line, which is returned."""
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


# --- export folders that cannot be published -------------------------------------------------------------------------


def test_folder_without_weights(copy, capsys, tmp_path):
    (copy / "model.safetensors").unlink()
    with pytest.raises(MissingPathError, match=r"pub/model.safetensors: no weights in the export folder"):
        push(copy, "my-org/x", dry_run=tmp_path / "dry")
    torch.save({}, copy / "pytorch_model.bin")
    line = _cli_error(["push", copy, "--repo-id", "my-org/x", "--dry-run", tmp_path / "dry"], capsys)
    assert "model.safetensors: no weights" in line and "pickle files are not published" in line
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    "arch, match",
    [
        ("resnet50", r"config.json: field 'architecture' is 'resnet50', not a facezoo model"),
        ("iresnet51_gwp", r"'iresnet51_gwp', not a facezoo model; did you mean 'iresnet50_gwp'"),
    ],
)
def test_config_with_an_architecture_facezoo_does_not_know(copy, capsys, tmp_path, arch, match):
    _edit_config(copy, architecture=arch)
    with pytest.raises(UnknownNameError, match=match):
        check_export_folder(copy)
    line = _cli_error(["push", copy, "--repo-id", "my-org/x", "--dry-run", tmp_path / "dry"], capsys)
    assert "config.json" in line and "architecture" in line


def test_config_that_timm_would_reject(copy, tmp_path):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["pretrained_cfg"]["facezoo_head"] = "gap"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ConfigError,
        match=r"field 'pretrained_cfg' has keys timm rejects: facezoo_head; extra metadata "
        r"belongs at the root",
    ):
        push(copy, "my-org/x", dry_run=tmp_path / "dry")
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"pub/config.json: not JSON"):
        check_export_folder(copy)


def test_weights_that_do_not_fit_the_config(copy, tmp_path, capsys):
    other = save_pretrained(small_model("iresnet18", img_size=32), tmp_path / "other")  # flatten: fc 2048 -> 512
    shutil.copy(other / "model.safetensors", copy / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"pub/model.safetensors: checkpoint shapes do not fit this model: "
        r"\[fc.weight: checkpoint \(512, 2048\) vs model \(512, 512\)\]",
    ):
        check_export_folder(copy)
    line = _cli_error(["push", copy, "--repo-id", "my-org/x", "--dry-run", tmp_path / "dry"], capsys)
    assert "model.safetensors" in line and "do not fit" in line
    assert not (tmp_path / "dry").exists()


def test_checkpoint_that_does_not_fit_the_model(tmp_path, capsys):
    torch.save(small_model("iresnet18", img_size=32).state_dict(), tmp_path / "flatten.pth")
    line = _cli_error(
        ["export", "hub", "iresnet18_gwp", "--checkpoint", tmp_path / "flatten.pth", "--output", tmp_path / "pub"],
        capsys,
    )
    assert "flatten.pth: checkpoint shapes do not fit this model" in line and "looks like iresnet18" in line
    assert not (tmp_path / "pub").exists()


# --- results files that are not facezoo eval output ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, match",
    [
        ("[1, 2, 3]", r"bad.json: not a 'facezoo eval' results.json \(a JSON list"),
        ('{"accuracy": 0.99}', r"bad.json: not a 'facezoo eval' results.json \(no 'model' field\)"),
        ("{oops", r"bad.json: not JSON"),
        (
            "verification.lfw.accuracy",
            r"bad.json: field 'verification.lfw.accuracy' must be a number in \[0, 1\], got 'high'",
        ),
        ("ijb.target", r"bad.json: field 'ijb.target' must be 'IJBB' or 'IJBC', got 'IJBA'"),
        (
            "ijb.tar",
            r"bad.json: field 'ijb.modes.default.tar_at_far.1e-4' must be a number in \[0, 1\] or null, got 96.1",
        ),
        ("empty", r"bad.json: no 'verification' or 'ijb' field"),
    ],
)
def test_results_that_are_not_facezoo_eval_output(tmp_path, capsys, content, match):
    doc = eval_results()
    if content == "verification.lfw.accuracy":
        doc["verification"]["lfw"]["accuracy"] = "high"
    elif content == "ijb.target":
        doc["ijb"]["target"] = "IJBA"
    elif content == "ijb.tar":
        doc["ijb"]["modes"]["default"]["tar_at_far"]["1e-4"] = 96.1  # a percentage where a rate belongs
    elif content == "empty":
        doc = {"model": "iresnet18", "facezoo_version": "0.1.0"}
    text = json.dumps(doc) if content in ("verification.lfw.accuracy", "ijb.target", "ijb.tar", "empty") else content
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ConfigError, match=match):
        save_pretrained(small_model("iresnet18_gap", img_size=32), tmp_path / "pub", results=tmp_path / "bad.json")
    assert not (tmp_path / "pub").exists()
    line = _cli_error(
        ["export", "hub", "iresnet18_gap", "--results", tmp_path / "bad.json", "--output", tmp_path / "pub"], capsys
    )
    assert "bad.json" in line
    assert not (tmp_path / "pub").exists()


def test_missing_results_file_and_recipe(tmp_path, capsys):
    line = _cli_error(
        ["export", "hub", "iresnet18_gap", "--results", tmp_path / "nope.json", "--output", tmp_path / "pub"], capsys
    )
    assert "nope.json: no such results file" in line
    write_results(tmp_path / "results.json")
    (tmp_path / "recipe.yaml").write_text("- just\n- a list\n")
    line = _cli_error(
        [
            "export",
            "hub",
            "iresnet18_gap",
            "--results",
            tmp_path / "results.json",
            "--training",
            tmp_path / "recipe.yaml",
            "--output",
            tmp_path / "pub",
        ],
        capsys,
    )
    assert "recipe.yaml: a training recipe must be a mapping" in line


def test_unknown_model_and_existing_output(tmp_path, capsys):
    assert "unknown model 'iresnet18_gwq'; did you mean 'iresnet18_gwp'" in _cli_error(
        ["export", "hub", "iresnet18_gwq", "--output", tmp_path / "pub"], capsys
    )
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "x").write_text("x")
    assert "pub: folder exists and is not empty; pass overwrite=True (--overwrite)" in _cli_error(
        ["export", "hub", "iresnet18_gap", "--output", tmp_path / "pub"], capsys
    )


# --- repo ids, the token, remote cards -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo_id, match",
    [
        ("iresnet50_gwp", "expected ORG/NAME"),
        ("my-org/a/b", "expected ORG/NAME"),
        ("my-org/", "expected ORG/NAME"),
        ("my org/x", "not a valid Hub repo id"),
        ("my-org/x--y", "not a valid Hub repo id"),
    ],
)
def test_repo_id_of_the_wrong_form(export_dir, tmp_path, capsys, hub_calls, repo_id, match):
    with pytest.raises(ConfigError, match=match):
        push(export_dir, repo_id, dry_run=tmp_path / "dry")
    line = _cli_error(["push", export_dir, "--repo-id", repo_id], capsys)
    assert f"--repo-id {repo_id!r}" in line and match in line
    assert not (tmp_path / "dry").exists() and hub_calls == []
    assert f"--repo-id {repo_id!r}" in _cli_error(
        ["export", "hub", "iresnet18_gap", "--repo-id", repo_id, "--output", tmp_path / "pub"], capsys
    )


def test_push_arguments_that_do_not_go_together(export_dir, tmp_path, capsys, hub_calls):
    assert "not both" in _cli_error(["push", export_dir, "--repo-id", "a/b", "--repo-id-prefix", "a/"], capsys)
    assert "give --repo-id ORG/NAME" in _cli_error(["push", export_dir], capsys)
    runs = tmp_path / "runs"
    shutil.copytree(export_dir, runs / "r1" / "export")
    assert "a folder of 1 runs needs --repo-id-prefix" in _cli_error(["push", runs, "--repo-id", "a/b"], capsys)
    (tmp_path / "empty").mkdir()
    assert "empty: no export folder here" in _cli_error(["push", tmp_path / "empty", "--repo-id-prefix", "a/"], capsys)
    assert "no such export folder" in _cli_error(["push", tmp_path / "nope", "--repo-id", "a/b"], capsys)
    (tmp_path / "dry").mkdir()
    (tmp_path / "dry" / "mine.txt").write_text("x")
    assert "is not an earlier dry run" in _cli_error(
        ["push", export_dir, "--repo-id", "a/b", "--dry-run", tmp_path / "dry"], capsys
    )
    assert (tmp_path / "dry" / "mine.txt").exists() and hub_calls == []


def test_missing_token_on_a_real_push(export_dir, tmp_path, monkeypatch, capsys, hub_calls):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push(export_dir, "my-org/x")
    assert "no Hugging Face token" in _cli_error(["push", export_dir, "--repo-id", "my-org/x"], capsys)
    assert hub_calls == []


def test_hand_written_remote_readme_is_kept(export_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    remote = tmp_path / "remote_README.md"
    remote.write_text("---\nlicense: mit\n---\n# Our model\n\nWritten by hand.\n")
    calls = []
    monkeypatch.setattr(HfApi, "file_exists", lambda self, repo_id, filename, **kw: calls.append("file_exists") or True)
    monkeypatch.setattr(HfApi, "hf_hub_download", lambda self, repo_id, filename, **kw: str(remote))
    for name in ("create_repo", "upload_folder", "create_branch"):
        monkeypatch.setattr(HfApi, name, lambda self, *a, _n=name, **kw: calls.append(_n))
    with pytest.raises(
        HubError,
        match=r"my-org/x: the Hub repo's README.md was not written by facezoo .* pass "
        r"--overwrite-card",
    ):
        push(export_dir, "my-org/x")
    line = _cli_error(["push", export_dir, "--repo-id", "my-org/x"], capsys)
    assert "README.md" in line and "--overwrite-card" in line
    assert calls == ["file_exists", "file_exists"]  # checked, nothing created or uploaded
