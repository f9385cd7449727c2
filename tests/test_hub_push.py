"""``facezoo push``: dry runs (offline, token-free output), the Hub calls of a real push (HfApi patched), loading back
through timm from an offline Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import timm
import torch
from hub_helpers import eval_results, hf_cache_with, reference_embeddings, small_model, write_results
from huggingface_hub import HfApi, ModelCard

from facezoo.cli import main
from facezoo.hub import push, save_pretrained
from facezoo.hub.card import CARD_MARKER

FAKE_TOKEN = "hf_FAKEfakeFAKEfake0123456789abcdefXYZ"
REPO = "my-org/iresnet18_gwp.arcface_synth"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export folder (with metrics) and the model it holds."""
    root = tmp_path_factory.mktemp("export")
    model = small_model("iresnet18_gwp")
    results = write_results(root / "eval_out" / "results.json")
    out = save_pretrained(
        model, root / "pub", results=results, training={"margin": "arcface", "epochs": 2}, datasets=["synthetic"]
    )
    return out, model


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, a fake HF_TOKEN in the environment, and no network connection possible at all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    def no_network(*args, **kwargs):
        raise AssertionError("a dry run opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in (
        "create_repo",
        "upload_folder",
        "file_exists",
        "hf_hub_download",
        "create_collection",
        "add_collection_item",
        "create_branch",
        "repo_info",
    ):
        monkeypatch.setattr(HfApi, name, no_network)


class FakeHub:
    """Records the HfApi calls of a push; ``remote_cards`` maps repo id -> README.md text already on the Hub."""

    def __init__(self, monkeypatch, tmp_path, remote_cards=None):
        self.calls, self.tokens, self.uploaded = [], [], {}
        self.remote_cards = remote_cards or {}
        hub = self

        def create_repo(api, repo_id, **kw):
            hub.tokens.append(api.token)
            hub.calls.append(("create_repo", repo_id, kw))
            return SimpleNamespace(url=f"https://huggingface.co/{repo_id}", repo_id=repo_id)

        def create_branch(api, repo_id, **kw):
            hub.calls.append(("create_branch", repo_id, kw))

        def upload_folder(api, *, repo_id, folder_path, **kw):
            hub.calls.append(("upload_folder", repo_id, kw))
            hub.uploaded[repo_id] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", pr_url=None)

        def file_exists(api, repo_id, filename, **kw):
            hub.calls.append(("file_exists", repo_id, filename))
            return repo_id in hub.remote_cards

        def hf_hub_download(api, repo_id, filename, **kw):
            path = tmp_path / "remote" / repo_id / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(hub.remote_cards[repo_id])
            return str(path)

        def create_collection(api, title, **kw):
            hub.calls.append(("create_collection", title, kw))
            return SimpleNamespace(slug=f"{kw['namespace']}/gwp-paper-runs-0123")

        def add_collection_item(api, slug, item_id, item_type, **kw):
            hub.calls.append(("add_collection_item", slug, item_id, item_type, kw))

        for fn in (
            create_repo,
            create_branch,
            upload_folder,
            file_exists,
            hf_hub_download,
            create_collection,
            add_collection_item,
        ):
            monkeypatch.setattr(HfApi, fn.__name__, fn)

    def names(self):
        return [c[0] for c in self.calls]


def _all_bytes(folder: Path):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- dry run ---------------------------------------------------------------------------------------------------------


def test_dry_run_writes_the_upload_and_plan_and_leaks_no_token(exported, offline, tmp_path, capsys, caplog):
    folder, _ = exported
    out = tmp_path / "dry"
    with caplog.at_level(logging.DEBUG):
        rc = main(["push", str(folder), "--repo-id", REPO, "--dry-run", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "nothing was uploaded" in captured.out
    staged = out / REPO
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["my-org", "push_plan.json"]
    plan = json.loads((out / "push_plan.json").read_text())
    assert plan["dry_run"] is True and [r["repo_id"] for r in plan["repos"]] == [REPO]
    files = {f["path"]: f for f in plan["repos"][0]["files"]}
    for name, f in files.items():
        data = (staged / name).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert (staged / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    card = ModelCard.load(staged / "README.md")
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card.text and "ORG/NAME" not in card.text
    assert card.data.model_name == REPO and len(card.data.eval_results) == 11
    assert json.loads((staged / "config.json").read_text())["facezoo"]["repo_id"] == REPO
    # the token is nowhere: not in a file, not on stdout / stderr, not in a log record
    token = FAKE_TOKEN.encode()
    assert not [p for p, data in _all_bytes(out).items() if token in data]
    assert FAKE_TOKEN not in captured.out + captured.err
    assert not [r for r in caplog.records if FAKE_TOKEN in r.getMessage()]
    # an earlier dry run is replaced; any other non-empty folder is refused
    assert push(folder, REPO, dry_run=out)["repos"][0]["repo_id"] == REPO


def test_dry_run_folder_loads_through_timm_from_an_offline_hub_cache(exported, offline, tmp_path, monkeypatch):
    """The dry-run folder as the snapshot of a Hub cache built here; HF_HUB_OFFLINE=1 and sockets blocked."""
    folder, model = exported
    push(folder, REPO, dry_run=tmp_path / "dry")
    cache = hf_cache_with(tmp_path / "hub", REPO, tmp_path / "dry" / REPO)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    loaded = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
    assert loaded.pretrained_cfg["hf_hub_id"] == REPO
    torch.testing.assert_close(reference_embeddings(loaded), reference_embeddings(model), rtol=0, atol=0)


def test_dry_run_of_a_folder_of_runs_with_a_collection(exported, offline, tmp_path):
    folder, _ = exported
    runs = tmp_path / "runs"
    for run in ("r18_gwp_arcface", "r18_gwp_adaface"):
        shutil.copytree(folder, runs / run / "export")
        (runs / run / "train.log").write_text("not uploaded")
    (runs / "notes").mkdir()  # no export/: not a run
    plan = push(runs, repo_id_prefix="my-org/", collection="GWP paper runs", dry_run=tmp_path / "dry")
    assert [r["repo_id"] for r in plan["repos"]] == ["my-org/r18_gwp_adaface", "my-org/r18_gwp_arcface"]
    assert plan["collection"] == {"title": "GWP paper runs", "namespace": "my-org"}
    for rid in ("my-org/r18_gwp_adaface", "my-org/r18_gwp_arcface"):
        assert sorted(p.name for p in (tmp_path / "dry" / rid).iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
        ]


# --- a real push, with HfApi's methods recorded instead of sent ------------------------------------------------------


def test_push_calls_create_repo_and_upload_folder_with_the_staged_folder(
    exported, tmp_path, monkeypatch, capsys, caplog
):
    folder, _ = exported
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = FakeHub(monkeypatch, tmp_path)
    with caplog.at_level(logging.DEBUG):
        rc = main(
            [
                "push",
                str(folder),
                "--repo-id",
                REPO,
                "--private",
                "--revision",
                "v1",
                "--commit-message",
                "r18 GWP",
                "--create-pr",
            ]
        )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert hub.names() == ["file_exists", "create_repo", "upload_folder"]
    assert hub.calls[1] == ("create_repo", REPO, {"private": True, "exist_ok": True})
    assert hub.calls[2][2] == {
        "commit_message": "r18 GWP",
        "revision": "v1",
        "create_pr": True,
        "allow_patterns": ["config.json", "model.safetensors", "README.md"],
    }
    assert hub.tokens == [FAKE_TOKEN]  # from the environment, handed to HfApi only
    files = hub.uploaded[REPO]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert f"hf-hub:{REPO}".encode() in files["README.md"]
    assert FAKE_TOKEN not in captured.out + captured.err
    assert not [r for r in caplog.records if FAKE_TOKEN in r.getMessage()]
    assert not [n for n, data in files.items() if FAKE_TOKEN.encode() in data]
    assert f"pushed {folder} to {REPO}" in captured.out


def test_push_a_training_run_with_a_token_from_the_login_cache(exported, tmp_path, monkeypatch):
    folder, _ = exported
    run = tmp_path / "run"
    shutil.copytree(folder, run / "export")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    token_file = tmp_path / "hf_home" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_fromTheLoginCache0123456789")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    hub = FakeHub(monkeypatch, tmp_path, remote_cards={REPO: (folder / "README.md").read_text()})
    plan = push(run, REPO)  # the remote card is facezoo's: replaced without --overwrite-card
    assert hub.tokens == ["hf_fromTheLoginCache0123456789"]
    assert hub.names() == ["file_exists", "create_repo", "upload_folder"] and hub.calls[1][2]["private"] is None
    assert plan["repos"][0]["source"] == str((run / "export").resolve())
    assert plan["repos"][0]["commit"] == f"https://huggingface.co/{REPO}/commit/abc"


def test_push_runs_into_a_collection(exported, tmp_path, monkeypatch):
    folder, _ = exported
    runs = tmp_path / "runs"
    for run in ("a", "b"):
        shutil.copytree(folder, runs / "paper" / run / "export")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = FakeHub(monkeypatch, tmp_path)
    assert main(["push", str(runs), "--repo-id-prefix", "my-org/gwp-", "--collection", "GWP paper runs"]) == 0
    assert [c[1] for c in hub.calls if c[0] == "upload_folder"] == ["my-org/gwp-a", "my-org/gwp-b"]
    assert ("create_collection", "GWP paper runs", {"namespace": "my-org", "exists_ok": True}) in hub.calls
    items = [c[1:4] for c in hub.calls if c[0] == "add_collection_item"]
    assert items == [
        ("my-org/gwp-paper-runs-0123", "my-org/gwp-a", "model"),
        ("my-org/gwp-paper-runs-0123", "my-org/gwp-b", "model"),
    ]
    assert b"hf-hub:my-org/gwp-b" in hub.uploaded["my-org/gwp-b"]["README.md"]


def test_overwrite_card_replaces_a_hand_written_remote_readme(exported, tmp_path, monkeypatch):
    folder, _ = exported
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = FakeHub(monkeypatch, tmp_path, remote_cards={REPO: "# My model\n\nWritten by hand.\n"})
    push(folder, REPO, overwrite_card=True)
    assert "upload_folder" in hub.names()
    assert CARD_MARKER.encode() in hub.uploaded[REPO]["README.md"]


def test_save_pretrained_with_repo_id_names_it_in_the_card(tmp_path):
    out = save_pretrained(
        small_model("iresnet18_gap", img_size=32),
        tmp_path / "pub",
        repo_id="my-org/gap",
        results=eval_results("iresnet18_gap"),
    )
    text = (out / "README.md").read_text()
    assert 'create_model("hf-hub:my-org/gap"' in text and "- name: my-org/gap" in text
    plan = push(out, "my-org/gap2", dry_run=tmp_path / "dry")  # push retargets the recorded id
    text = (tmp_path / "dry" / "my-org" / "gap2" / "README.md").read_text()
    assert 'create_model("hf-hub:my-org/gap2"' in text and "- name: my-org/gap2" in text and 'my-org/gap"' not in text
    assert plan["repos"][0]["repo_id"] == "my-org/gap2"
