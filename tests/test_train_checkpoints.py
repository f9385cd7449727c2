"""Training checkpoints are verified before use (manifest of sizes and sha256), damaged ones are skipped or refused
in one line, and values that cannot train are refused before training (one line naming the key or data, exit 2)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from facezoo.cli import main
from facezoo.errors import CheckpointError
from facezoo.train import Trainer, load_recipe
from facezoo.train import checkpoint as ckpt

# 6 identities x 4 images = 24 images, batch 8: 3 steps per epoch, 6 in all
TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=16",
    "model.args={widths: [8, 8, 16, 16], layers: [1, 1, 1, 1], img_size: 32}",
    "data.synthetic.identities=6",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=8",
    "data.num_workers=0",
    "loss.s=16",
    "optim.lr=0.05",
    "train.epochs=2",
    "train.checkpoint_every=2",
    "train.tensorboard=false",
    "export.enabled=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run stopped at step 4: checkpoints step_2, step_3 (epoch end) and step_4."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(load_recipe(None, TINY), out, progress=False).fit(stop_at=4)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_2", "step_3", "step_4"]
    return out


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("model: {name: iresnet18_gwp}\n")
    return p


def resumed(run: Path, *extra: str, resume: str = "latest", tiny: List[str] = TINY) -> Trainer:
    """A Trainer resumed from ``run`` (set up only, nothing trained); its log handler is closed again."""
    trainer = Trainer(load_recipe(None, list(tiny) + list(extra)), run, resume=resume, progress=False)
    if trainer._log_handler is not None:
        logging.getLogger("facezoo").removeHandler(trainer._log_handler)
        trainer._log_handler.close()
    return trainer


def _fails(capsys, argv: List[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("facezoo train: error: ") and "Traceback" not in line
    for n in needles:
        assert n in line, line
    return line


# --- damage -----------------------------------------------------------------------------------------------------


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    p.write_bytes(bytes(data))


def _empty(folder: Path) -> None:
    for child in list(folder.iterdir()):
        shutil.rmtree(child) if child.is_dir() else child.unlink()


DAMAGE: Dict[str, Callable[[Path], str]] = {
    # name: damage the folder, return what the one-line error must name
    "truncated backbone": lambda d: (_truncate(d / "backbone.safetensors"), "backbone.safetensors")[1],
    "corrupted optimizer": lambda d: (_flip_byte(d / "backbone_optim.safetensors"), "backbone_optim.safetensors")[1],
    "missing backbone": lambda d: ((d / "backbone.safetensors").unlink(), "backbone.safetensors")[1],
    "missing optimizer": lambda d: ((d / "backbone_optim.safetensors").unlink(), "backbone_optim.safetensors")[1],
    "missing pfc shard": lambda d: ((d / "partial_fc" / "rank0_of_1.safetensors").unlink(), "rank0_of_1")[1],
    "missing rng": lambda d: ((d / "rng" / "rank0.pt").unlink(), "rng/rank0.pt")[1],
    "corrupted rng": lambda d: (_flip_byte(d / "rng" / "rank0.pt"), "rng/rank0.pt")[1],
    "corrupted state json": lambda d: ((d / "trainer_state.json").write_text('{"step": 4,'), "trainer_state.json")[1],
    "empty folder": lambda d: (_empty(d), "not a complete checkpoint")[1],
    "missing manifest": lambda d: ((d / "manifest.json").unlink(), "manifest.json")[1],
    "corrupt manifest": lambda d: ((d / "manifest.json").write_text("{nope"), "manifest.json")[1],
}


def test_a_checkpoint_has_a_manifest_of_every_file(trained):
    folder = trained / "checkpoints" / "step_4"
    manifest = json.loads((folder / "manifest.json").read_text())
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert {"backbone.safetensors", "partial_fc/rank0_of_1.safetensors", "rng/rank0.pt"} <= set(files)
    import hashlib

    entry = manifest["files"]["backbone.safetensors"]
    data = (folder / "backbone.safetensors").read_bytes()
    assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["step"] == 4 and manifest["world_size"] == 1
    ckpt.verify_checkpoint(folder)  # no error


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_path_to_a_damaged_checkpoint_is_one_line(run, recipe, tmp_path, capsys, case):
    folder = run / "checkpoints" / "step_4"
    needle = DAMAGE[case](folder)
    argv = ["train", str(recipe), "--output-dir", str(tmp_path / "other"), "--quiet", *TINY, "--resume", str(folder)]
    line = _fails(capsys, argv, needle, "step_4")
    assert "re-seed" not in line


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_latest_skips_a_damaged_newest_checkpoint(run, caplog, case):
    needle = DAMAGE[case](run / "checkpoints" / "step_4")
    with caplog.at_level(logging.WARNING, logger="facezoo"):
        found = ckpt.resolve_resume("latest", run)
    assert found is not None and found.name == "step_3"
    warned = [r.getMessage() for r in caplog.records if "step_4" in r.getMessage()]
    assert warned and needle in warned[0] and "step_3" in warned[0], warned


def test_resume_latest_end_to_end_takes_the_previous_checkpoint(run):
    (run / "checkpoints" / "step_4" / "rng" / "rank0.pt").unlink()
    trainer = resumed(run)
    assert trainer.step == 3 and trainer.resume_path.name == "step_3"
    log = (run / "train.log").read_text()
    assert "skipping checkpoints/step_4" in log and "rng/rank0.pt" in log
    assert "re-seeded" not in log


def test_resume_latest_with_every_checkpoint_damaged_is_refused(run, recipe, capsys):
    for name in ("step_2", "step_3", "step_4"):
        (run / "checkpoints" / name / "backbone.safetensors").unlink()
    argv = ["train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, "--resume", "latest"]
    _fails(capsys, argv, "no checkpoint", "step_4", "step_2", "backbone.safetensors")


def test_a_run_folder_as_resume_path_takes_its_newest_good_checkpoint(run, caplog):
    _truncate(run / "checkpoints" / "step_4" / "backbone.safetensors")
    with caplog.at_level(logging.WARNING, logger="facezoo"):
        assert ckpt.resolve_resume(str(run), run.parent / "elsewhere").name == "step_3"
    assert any("step_4" in r.getMessage() for r in caplog.records)


def test_a_damaged_newer_checkpoint_is_not_counted_as_kept(run):
    """Resumed from step_3 past a damaged step_4: pruning never deletes the good ones in favour of the damaged."""
    _truncate(run / "checkpoints" / "step_4" / "backbone.safetensors")
    removed = ckpt.prune_checkpoints(run, keep_last=1, current=3)
    assert [p.name for p in removed] == ["step_2"]
    assert (run / "checkpoints" / "step_3").is_dir()


# --- old checkpoints without a manifest ----------------------------------------------------------------------------


def _make_legacy(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    state = json.loads((folder / "trainer_state.json").read_text())
    state.pop("checkpoint_format")
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_an_old_checkpoint_without_manifest_resumes_with_a_warning(run):
    _make_legacy(run / "checkpoints" / "step_4")
    trainer = resumed(run)
    assert trainer.step == 4
    assert "cannot be verified" in (run / "train.log").read_text()


def test_an_old_checkpoint_with_a_missing_part_is_refused(run, recipe, tmp_path, capsys):
    folder = run / "checkpoints" / "step_4"
    _make_legacy(folder)
    (folder / "rng" / "rank0.pt").unlink()
    argv = ["train", str(recipe), "--output-dir", str(tmp_path / "o"), "--quiet", *TINY, "--resume", str(folder)]
    _fails(capsys, argv, "rng/rank0.pt", "missing")


def test_checkpoint_state_with_a_missing_field_names_the_file(run, recipe, tmp_path, capsys):
    """A valid-looking trainer_state.json (an old one edited by hand) without a field: one line, not a KeyError."""
    folder = run / "checkpoints" / "step_4"
    _make_legacy(folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    del state["scheduler"]
    (folder / "trainer_state.json").write_text(json.dumps(state))
    argv = ["train", str(recipe), "--output-dir", str(tmp_path / "o"), "--quiet", *TINY, "--resume", str(folder)]
    _fails(capsys, argv, "trainer_state.json", "scheduler")


# --- several ranks -------------------------------------------------------------------------------------------------


def test_every_rank_files_are_in_the_manifest(tmp_path):
    """Two ranks (threads) writing one checkpoint: the manifest holds both ranks' shards and RNG files."""
    world = 2
    sync = threading.Barrier(world)
    digests: List[object] = [None] * world

    def gather(rank: int) -> Callable[[object], List[object]]:
        def fn(obj: object) -> List[object]:
            digests[rank] = obj
            sync.wait()
            out = list(digests)
            sync.wait()
            return out

        return fn

    def write(rank: int) -> None:
        def rank_files(folder: Path) -> List[Path]:
            shard, rng = folder / ckpt.pfc_shard_name(rank, world), folder / ckpt.rng_name(rank)
            ckpt.save_tensors({"w": torch.full((2,), float(rank))}, shard)
            ckpt.save_rng_state(rng)
            return [shard, rng]

        def main_files(folder: Path) -> None:
            ckpt.save_tensors({"x": torch.zeros(1)}, folder / "backbone.safetensors")
            ckpt.save_tensors({}, folder / "backbone_optim.safetensors")
            ckpt.save_json({"step": 7, "world_size": 2, "checkpoint_format": 2}, folder / ckpt.STATE_FILE)

        ckpt.write_checkpoint(tmp_path, 7, rank, world, sync.wait, rank_files, main_files, gather=gather(rank))

    threads = [threading.Thread(target=write, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    folder = tmp_path / "checkpoints" / "step_7"
    files = json.loads((folder / "manifest.json").read_text())["files"]
    for r in range(world):
        assert f"partial_fc/rank{r}_of_2.safetensors" in files and f"rng/rank{r}.pt" in files
    ckpt.verify_checkpoint(folder)
    (folder / "rng" / "rank1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"rng/rank1.pt is missing"):
        ckpt.verify_checkpoint(folder)


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_cover_both_ranks_and_an_elastic_resume_says_so(tmp_path):
    """A real 2-process checkpoint (gloo): the manifest lists both ranks' files; resuming on 1 process re-shards
    and logs that the process count changed; a missing rank-1 RNG file is an error, not a re-seed."""
    from test_train_dist import TINY as DIST_TINY
    from test_train_dist import launch

    run = tmp_path / "run"
    launch(2, run, "--stop-at-step", "2")
    folder = run / "checkpoints" / "step_2"
    files = json.loads((folder / "manifest.json").read_text())["files"]
    for r in range(2):
        assert f"partial_fc/rank{r}_of_2.safetensors" in files and f"rng/rank{r}.pt" in files
    assert ckpt.verify_checkpoint(folder)
    trainer = resumed(run, tiny=DIST_TINY)
    assert trainer.step == 2 and trainer.world == 1
    assert "the process count changed" in (run / "train.log").read_text()
    (folder / "rng" / "rank1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"rng/rank1.pt is missing"):
        ckpt.resolve_resume(str(folder), run)


# --- values that cannot train --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.backbone_lr_scale=.inf", "optim.backbone_lr_scale"),
        ("schedule.min_lr=.inf", "schedule.min_lr"),
        ("schedule.min_lr=.nan", "schedule.min_lr"),
    ],
)
def test_learning_rates_that_cannot_train_are_refused(recipe, tmp_path, capsys, override, needle):
    line = _fails(capsys, ["train", str(recipe), "--output-dir", str(tmp_path / "o"), *TINY, override], needle)
    assert "finite" in line or "> 0" in line
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_a_micro_batch_of_one_is_refused(recipe, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "o")]
    line = _fails(capsys, ["train", str(recipe), *out, *TINY, "data.batch_size=1"], "data.batch_size", "BatchNorm")
    assert "at least 2" in line
    _fails(
        capsys,
        ["train", str(recipe), *out, *TINY, "data.batch_size=4", "train.grad_accum=4"],
        "data.batch_size",
        "train.grad_accum",
        "BatchNorm",
    )


def _one_identity_rec(tmp_path: Path) -> Path:
    from facezoo.data import encode_image
    from facezoo.data.recordio import write_face_records

    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    write_face_records(tmp_path / "rec", [(encode_image(im), 0) for im in images], insightface_header=False)
    return tmp_path / "rec"


def test_a_training_set_of_one_identity_is_refused(recipe, tmp_path, capsys):
    rec = _one_identity_rec(tmp_path)
    out = ["--output-dir", str(tmp_path / "o")]
    _fails(capsys, ["train", str(recipe), *out, *TINY, f"data.train={rec}"], "data.train", "1 identity", "two")
    # also when data.num_classes claims more classes than the labels use
    _fails(
        capsys,
        ["train", str(recipe), *out, *TINY, f"data.train={rec}", "data.num_classes=10"],
        "data.train",
        "1 identity",
    )


# --- resuming with other data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.synthetic.seed=1", "data.synthetic.seed"),
        ("data.synthetic.difficulty=0.5", "data.synthetic.difficulty"),
    ],
)
def test_resume_refuses_other_data_of_the_same_size(run, recipe, capsys, override, needle):
    argv = ["train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, override, "--resume", "latest"]
    line = _fails(capsys, argv, needle, "checkpoint", "same data")
    assert "step_4" in line


def test_resume_refuses_other_labels_of_the_same_size(tmp_path, recipe, capsys):
    from facezoo.data import encode_image
    from facezoo.data.recordio import write_face_records

    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    for name, labels in (("a", [i % 4 for i in range(16)]), ("b", [i // 4 for i in range(16)])):
        write_face_records(
            tmp_path / name, [(encode_image(im), lab) for im, lab in zip(images, labels)], insightface_header=False
        )
    run = tmp_path / "run"
    base = ["train", str(recipe), "--output-dir", str(run), "--quiet", *TINY]
    assert main([*base, f"data.train={tmp_path / 'a'}", "--stop-at-step", "1"]) == 0
    capsys.readouterr()
    shutil.move(str(tmp_path / "a"), str(tmp_path / "a_old"))
    shutil.move(str(tmp_path / "b"), str(tmp_path / "a"))  # same path, same size, other labels
    _fails(capsys, [*base, f"data.train={tmp_path / 'a'}", "--resume", "latest"], "labels", "same data")


def test_resume_with_the_same_data_logs_the_lr_change(run, caplog):
    trainer = resumed(run, "optim.lr=0.01")
    assert trainer.step == 4
    assert trainer.scheduler.base_lrs == [0.01, 0.01]
    assert "optim.lr / optim.backbone_lr_scale changed" in (run / "train.log").read_text()
