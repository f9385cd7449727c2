"""Training checkpoints that survive a crash at any moment and resume exactly, also on another process count.

A checkpoint is the folder ``<output-dir>/checkpoints/step_<N>/``:

* ``backbone.safetensors`` -- the backbone (unwrapped, no DDP / compile prefixes); rank 0;
* ``backbone_optim.safetensors`` -- the optimizer state of every backbone parameter, by parameter name; rank 0
  (DDP keeps the replicas identical);
* ``partial_fc/rank<r>_of_<W>.safetensors`` -- every rank's Partial FC shard (class centres, ``shard_spec``, margin
  head statistics such as AdaFace's norm EMA) WITH the optimizer state of those rows (``optim.momentum_buffer``
  for SGD; ``optim.exp_avg`` / ``optim.exp_avg_sq`` / ``optim.step`` for AdamW), so a resume on W' processes
  re-shards both (``facezoo.losses.read_shard_range``);
* ``rng/rank<r>.pt`` -- every rank's torch (CPU and CUDA), numpy and Python RNG states (``weights_only`` loadable);
* ``trainer_state.json`` -- step, data position (epoch, sample offset), scheduler, loss scale, bad-step streak,
  world size, global batch, and the identity of the run (architecture, classes, embedding size, loss).

Accelerate's ``save_state`` writes optimizer and custom state from rank 0 only and straight into the final folder;
facezoo owns these parts instead. Every file is written and flushed (fsync) inside ``.staging-step_<N>``; after a
barrier, rank 0 renames the folder to ``step_<N>`` and flushes its parent, so a folder named ``step_<N>`` is
always complete. Old checkpoints beyond ``keep_last`` are renamed away before they are deleted, and only after
the new one is in place. The output folder must be shared by all nodes (as for any multi-node checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from facezoo.errors import CheckpointError, MissingPathError

__all__ = [
    "CHECKPOINT_DIR",
    "step_dir_name",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "write_checkpoint",
    "prune_checkpoints",
    "read_trainer_state",
    "check_identity",
    "save_rng_state",
    "load_rng_state",
    "fsync_file",
    "fsync_dir",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{int(step)}"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors file written and flushed (the folder it is in is renamed into place later)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    fsync_file(path)


def save_json(doc: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    fsync_file(path)


# --- finding checkpoints -------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> List[Path]:
    """Complete checkpoints of a run, oldest first (staging and trash folders are never listed)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """``--resume latest`` -> the newest complete checkpoint in ``output_dir`` (None when there is none yet, so a
    preemptible job can always pass it); ``--resume PATH`` -> that checkpoint folder (or a run folder: its latest)."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    p = Path(resume).expanduser()
    if not p.exists():
        raise MissingPathError(
            f"{resume}: no such checkpoint (expected <output-dir>/checkpoints/step_<N>, a run folder, or 'latest')"
        )
    if (p / STATE_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(
            f"{resume}: not a facezoo training checkpoint (no {STATE_FILE}) and no checkpoints/ folder with one"
        )
    return latest


def read_trainer_state(path: Path) -> Dict[str, Any]:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read {STATE_FILE} ({exc})") from None


def check_identity(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint of another model, class count, embedding size or loss, naming the fields."""
    differ = [k for k in current if k in saved and saved[k] != current[k]]
    if differ:
        fields = "; ".join(f"{k}: checkpoint {saved[k]!r}, recipe {current[k]!r}" for k in differ)
        raise CheckpointError(
            f"{path} belongs to another run ({fields}). --resume continues the same run; to start from its weights "
            f"with new classes, set model.pretrained={Path(path) / 'backbone.safetensors'} (fine-tuning)"
        )


# --- RNG ------------------------------------------------------------------------------------------------------------


def save_rng_state(path: Path) -> None:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": random.getstate(),
    }
    torch.save(state, path)
    fsync_file(path)


def load_rng_state(path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --- writing --------------------------------------------------------------------------------------------------------


def write_checkpoint(
    output_dir: Path,
    step: int,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    write_rank_files: Callable[[Path], None],
    write_main_files: Callable[[Path], None],
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically (see the module docstring); every rank calls this.

    ``write_rank_files(folder)`` writes this rank's files (its Partial FC shard, its RNG state);
    ``write_main_files(folder)`` runs on rank 0 only (backbone, optimizer, trainer state).
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    staging = root / f".staging-{step_dir_name(step)}"
    final = root / step_dir_name(step)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "partial_fc").mkdir(parents=True)
        (staging / "rng").mkdir()
    barrier()
    write_rank_files(staging)
    barrier()
    if rank == 0:
        write_main_files(staging)
        for sub in (staging / "partial_fc", staging / "rng", staging):
            fsync_dir(sub)
        old = None
        if final.exists():  # the same step written again (e.g. a resumed run stopped at once): swap it
            old = root / f".trash-{final.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(staging, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def prune_checkpoints(output_dir: Path, keep_last: int) -> List[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (rank 0 only); returns what was removed."""
    removed = []
    for p in list_checkpoints(output_dir)[:-keep_last]:
        trash = p.with_name(f".trash-{p.name}")
        os.replace(p, trash)  # never a half-deleted folder under a step_<N> name
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(p)
    return removed


def load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read this checkpoint file ({' '.join(str(exc).split())})") from None
