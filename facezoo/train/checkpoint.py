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
  world size, global batch, the identity of the run (architecture, classes, embedding size, loss) and the
  fingerprint of its training data (source, size, label counts, the synthetic generator's settings);
* ``manifest.json`` -- written last: the size and sha256 of every other file. Each rank hashes the files it wrote
  and sends the digests to rank 0 (one ``gather``), so the shards of every rank are covered without rank 0
  reading them back.

Accelerate's ``save_state`` writes optimizer and custom state from rank 0 only and straight into the final folder;
facezoo owns these parts instead. Every file is written and flushed (fsync) inside ``.staging-step_<N>``; after a
barrier, rank 0 renames the folder to ``step_<N>`` and flushes its parent, so a folder named ``step_<N>`` is
always complete. Old checkpoints beyond ``keep_last`` are renamed away before they are deleted, and only after
the new one is in place. The output folder must be shared by all nodes (as for any multi-node checkpoint).

Before a resume, :func:`verify_checkpoint` checks every file against the manifest (a missing, truncated or
changed file is a :class:`CheckpointError` naming it); ``--resume latest`` takes the newest folder that verifies
and logs the newer ones it skipped. A checkpoint written before manifests existed (its ``trainer_state.json`` has
no ``checkpoint_format``) is accepted with a warning that it cannot be verified, after checking that every file
it needs exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from facezoo.errors import CheckpointError, MissingPathError

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "MANIFEST_FILE",
    "STATE_FILE",
    "step_dir_name",
    "step_folders",
    "list_checkpoints",
    "latest_checkpoint",
    "newest_verified",
    "resolve_resume",
    "verify_checkpoint",
    "file_digest",
    "required_files",
    "pfc_shard_name",
    "rng_name",
    "state_field",
    "source_labels",
    "data_fingerprint",
    "check_data",
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
MANIFEST_FILE = "manifest.json"
#: the ``checkpoint_format`` of trainer_state.json; checkpoints without one predate manifests
CHECKPOINT_FORMAT = 2
_HASH_CHUNK = 1 << 20
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


# --- manifest and verification ---------------------------------------------------------------------------------


def file_digest(path: Path) -> Dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return {"size": Path(path).stat().st_size, "sha256": h.hexdigest()}


def required_files(world_size: int) -> List[str]:
    """The files every checkpoint of ``world_size`` processes holds (paths relative to its folder)."""
    return [
        "backbone.safetensors",
        "backbone_optim.safetensors",
        STATE_FILE,
        *(pfc_shard_name(r, world_size) for r in range(world_size)),
        *(rng_name(r) for r in range(world_size)),
    ]


def pfc_shard_name(rank: int, world_size: int) -> str:
    return f"partial_fc/rank{int(rank)}_of_{int(world_size)}.safetensors"


def rng_name(rank: int) -> str:
    return f"rng/rank{int(rank)}.pt"


def _read_manifest(path: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({' '.join(str(exc).split())})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    world = doc.get("world_size") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not isinstance(world, int) or world < 1:
        raise CheckpointError(f"{path} is damaged: expected 'files' (a mapping) and 'world_size' (an integer)")
    for rel, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        if not ok:
            raise CheckpointError(f"{path} is damaged: the entry of {rel} has no size and sha256")
    return doc


def verify_checkpoint(folder: Path, checksums: bool = True) -> bool:
    """Check a ``step_<N>`` folder before it is used; True when it was verified against its manifest, False for a
    checkpoint written before manifests existed (its files exist, their content cannot be checked).

    Raises :class:`CheckpointError` naming the first bad file: missing, of another size than the manifest says,
    or (``checksums``) with another sha256. ``checksums=False`` is the cheap check (sizes only) used to list and
    prune checkpoints; a resume always checks the sha256 of every file.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(f"{folder}: not a complete checkpoint (no {MANIFEST_FILE}, no {STATE_FILE})")
        state = read_trainer_state(folder)
        if "checkpoint_format" in state:
            raise CheckpointError(
                f"{manifest_path} is missing ({STATE_FILE} says this checkpoint was written with one): "
                "its files cannot be verified"
            )
        world = state_field(state, "world_size", folder)
        for rel in required_files(int(world)):
            if not (folder / rel).is_file():
                raise CheckpointError(f"{folder / rel} is missing (a checkpoint of {world} process(es) needs it)")
        return False
    manifest = _read_manifest(manifest_path)
    files: Dict[str, Dict[str, Any]] = manifest["files"]
    for rel in required_files(manifest["world_size"]):
        if rel not in files:
            raise CheckpointError(f"{manifest_path} does not list {rel}: not a complete checkpoint")
    for rel, entry in files.items():
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(f"{p} is missing (listed in {MANIFEST_FILE})")
        size = p.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{p} is damaged: {size} bytes, {MANIFEST_FILE} says {entry['size']} (truncated or overwritten)"
            )
    if checksums:
        for rel, entry in files.items():
            if file_digest(folder / rel)["sha256"] != entry["sha256"]:
                raise CheckpointError(
                    f"{folder / rel} is damaged: its sha256 differs from the one in {MANIFEST_FILE} "
                    "(changed or corrupted after it was written)"
                )
    return True


# --- finding checkpoints -------------------------------------------------------------------------------------------


def _step_of(p: Path) -> int:
    m = _STEP.match(p.name)
    return int(m.group(1)) if m else -1


def step_folders(output_dir: Path) -> List[Path]:
    """Every ``step_<N>`` folder of a run, oldest first, damaged or not (staging and trash folders excluded)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP.match(p.name)), key=_step_of)


def _looks_complete(p: Path) -> bool:
    try:
        verify_checkpoint(p, checksums=False)
    except CheckpointError:
        return False
    return True


def list_checkpoints(output_dir: Path) -> List[Path]:
    """Complete checkpoints of a run, oldest first: every file there with the size its manifest says (the cheap
    check; :func:`resolve_resume` also compares checksums)."""
    return [p for p in step_folders(output_dir) if _looks_complete(p)]


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _warn_unverified(path: Path) -> None:
    _logger.warning(
        "%s has no %s (written by an older facezoo): its files exist but cannot be verified", path, MANIFEST_FILE
    )


def newest_verified(output_dir: Path, what: str = "--resume latest") -> Optional[Path]:
    """The newest checkpoint of a run that verifies (None when the run has no ``step_<N>`` folder yet); logs a
    warning for every newer one skipped, with the reason. Every folder damaged: a :class:`CheckpointError`."""
    skipped: List[str] = []
    for p in reversed(step_folders(output_dir)):
        try:
            verified = verify_checkpoint(p)
        except CheckpointError as exc:
            skipped.append(f"{p.name}: {exc}")
            continue
        for reason in skipped:
            name, _, why = reason.partition(": ")
            _logger.warning("%s: skipping %s/%s (%s), resuming from %s", what, CHECKPOINT_DIR, name, why, p.name)
        if not verified:
            _warn_unverified(p)
        return p
    if skipped:
        raise CheckpointError(
            f"{what}: no checkpoint in {Path(output_dir) / CHECKPOINT_DIR} verifies ({'; '.join(skipped)})"
        )
    return None


def resolve_resume(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """``--resume latest`` -> the newest checkpoint of ``output_dir`` that verifies (None when there is none yet,
    so a preemptible job can always pass it; newer damaged ones are skipped with a warning); ``--resume PATH`` ->
    that checkpoint folder, verified (a damaged one is a :class:`CheckpointError` naming the file), or a run
    folder (its newest that verifies)."""
    if resume is None:
        return None
    if resume == "latest":
        return newest_verified(output_dir)
    p = Path(resume).expanduser()
    if not p.exists():
        raise MissingPathError(
            f"{resume}: no such checkpoint (expected <output-dir>/checkpoints/step_<N>, a run folder, or 'latest')"
        )
    if _STEP.match(p.name) or (p / MANIFEST_FILE).exists() or (p / STATE_FILE).exists():
        if not verify_checkpoint(p):
            _warn_unverified(p)
        return p
    latest = newest_verified(p, what=f"--resume {resume}") if (p / CHECKPOINT_DIR).is_dir() else None
    if latest is None:
        raise CheckpointError(
            f"{resume}: not a facezoo training checkpoint (no {MANIFEST_FILE}) and no checkpoints/step_<N> in it"
        )
    return latest


def read_trainer_state(path: Path) -> Dict[str, Any]:
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{Path(path) / STATE_FILE}: cannot read it ({' '.join(str(exc).split())})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{Path(path) / STATE_FILE}: expected a JSON object, got {type(state).__name__}")
    return state


def state_field(state: Mapping[str, Any], key: str, path: Path) -> Any:
    """``state[key]``, or a :class:`CheckpointError` naming the checkpoint's state file and the missing field."""
    if key not in state:
        raise CheckpointError(f"{Path(path) / STATE_FILE}: no {key!r} field (a damaged or foreign checkpoint)")
    return state[key]


def check_identity(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint of another model, class count, embedding size or loss, naming the fields."""
    differ = [k for k in current if k in saved and saved[k] != current[k]]
    if differ:
        fields = "; ".join(f"{k}: checkpoint {saved[k]!r}, recipe {current[k]!r}" for k in differ)
        raise CheckpointError(
            f"{path} belongs to another run ({fields}). --resume continues the same run; to start from its weights "
            f"with new classes, set model.pretrained={Path(path) / 'backbone.safetensors'} (fine-tuning)"
        )


# --- the training data's fingerprint --------------------------------------------------------------------------------


def source_labels(ds: Any) -> Optional[np.ndarray]:
    """Every label of a training source in sample order (int64) when it is cheap to know (in memory, synthetic,
    identity folders, Arrow columns, .rec files of up to 1M records); None otherwise."""
    from facezoo.data import HFFaces, ImageFolderFaces, RecordIOFaces, SyntheticFaces
    from facezoo.train.data import InMemoryFaces

    if isinstance(ds, InMemoryFaces):
        return ds.labels.numpy().astype(np.int64)
    if isinstance(ds, SyntheticFaces):
        return np.arange(len(ds), dtype=np.int64) // ds.images_per_identity
    if isinstance(ds, ImageFolderFaces):
        return np.asarray(ds.targets, dtype=np.int64)
    if isinstance(ds, HFFaces):
        col = ds.ds.data.column(ds.label_column)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    if isinstance(ds, RecordIOFaces) and len(ds) <= 1_000_000:
        return ds.labels(progress=False)
    return None


def data_fingerprint(data: Any, num_samples: int, labels: Optional[np.ndarray]) -> Dict[str, Any]:
    """What identifies a run's training data (``data`` is the recipe's ``data`` section), by the names a user
    knows: the source (an absolute path or a Hub id), its size, the synthetic generator's settings, and a sha256 of
    the label sequence when the labels are known."""
    from facezoo.errors import looks_like_local_path

    train = str(data.train)
    if train != "synthetic" and looks_like_local_path(train):
        train = str(Path(train).expanduser().resolve())
    fp: Dict[str, Any] = {"data.train": train, "images": int(num_samples)}
    if data.train == "synthetic":
        s = data.synthetic
        fp.update(
            {
                "data.synthetic.identities": s.identities,
                "data.synthetic.images_per_identity": s.images_per_identity,
                "data.synthetic.difficulty": s.difficulty,
                "data.synthetic.seed": s.seed,
            }
        )
    if labels is not None:
        fp["labels (sha256)"] = hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()
    return fp


def check_data(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume on other training data, naming what changed. A moved source (another path, the same labels)
    is allowed with a warning."""
    differ = [k for k in current if k in saved and saved[k] != current[k]]
    same_labels = "labels (sha256)" in saved and saved.get("labels (sha256)") == current.get("labels (sha256)")
    if differ == ["data.train"] and same_labels:
        _logger.warning(
            "data.train moved from %s to %s (the same labels in the same order): resuming",
            saved["data.train"],
            current["data.train"],
        )
        return
    if differ:
        fields = "; ".join(f"{k}: checkpoint {saved[k]!r}, now {current[k]!r}" for k in differ)
        raise CheckpointError(
            f"{path} was trained on other data ({fields}): --resume continues the same data (start a new run "
            "in another --output-dir, or fine-tune from its backbone with model.pretrained)"
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch_state, cuda, np_state, py_state = state["torch"], state["cuda"], state["numpy"], state["python"]
        kind, keys, pos, has_gauss, cached = np_state
        version, internal, gauss = py_state
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the random states of this process cannot be restored") from None
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read these random states ({' '.join(str(exc).split())})") from None
    torch.set_rng_state(torch_state)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((version, tuple(internal), gauss))


# --- writing --------------------------------------------------------------------------------------------------------


def _gather_one(obj: Any) -> List[Any]:
    return [obj]


def write_checkpoint(
    output_dir: Path,
    step: int,
    rank: int,
    world_size: int,
    barrier: Callable[[], None],
    write_rank_files: Callable[[Path], Optional[Sequence[Path]]],
    write_main_files: Callable[[Path], None],
    gather: Optional[Callable[[Any], List[Any]]] = None,
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically (see the module docstring); every rank calls this.

    ``write_rank_files(folder)`` writes this rank's files (its Partial FC shard, its RNG state) and returns their
    paths; this rank hashes them and ``gather(digests)`` (every rank calls it; it returns the list of every rank's
    digests, e.g. Accelerate's ``gather_object``) brings the digests to rank 0. ``write_main_files(folder)`` runs
    on rank 0 only (backbone, optimizer, trainer state); rank 0 hashes what is not covered yet, writes
    ``manifest.json`` last and renames the folder into place. Without ``gather`` (one process) rank 0 hashes
    every file itself.
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
    written = write_rank_files(staging) or []
    digests = {Path(p).relative_to(staging).as_posix(): file_digest(Path(p)) for p in written}
    everyone = (gather or _gather_one)(digests)
    barrier()
    if rank == 0:
        write_main_files(staging)
        files: Dict[str, Dict[str, Any]] = {}
        for part in everyone:
            files.update(part)
        for f in sorted(staging.rglob("*")):
            rel = f.relative_to(staging).as_posix()
            if f.is_file() and rel not in files:
                files[rel] = file_digest(f)
        manifest = {"format": CHECKPOINT_FORMAT, "step": int(step), "world_size": int(world_size), "files": files}
        save_json(manifest, staging / MANIFEST_FILE)
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


def prune_checkpoints(output_dir: Path, keep_last: int, current: Optional[int] = None) -> List[Path]:
    """Keep the newest ``keep_last`` complete checkpoints up to step ``current`` (rank 0 only) and delete every
    folder older than them, damaged ones included; returns what was removed. Folders after ``current`` (a damaged
    newer checkpoint that a resume skipped) are left alone, so they never count as kept."""
    folders = [p for p in step_folders(output_dir) if current is None or _step_of(p) <= current]
    good = [p for p in folders if _looks_complete(p)]
    if len(good) <= keep_last:
        return []
    oldest_kept = _step_of(good[-keep_last])
    removed = []
    for p in folders:
        if _step_of(p) >= oldest_kept:
            continue
        trash = p.with_name(f".trash-{p.name}")
        os.replace(p, trash)  # never a half-deleted folder under a step_<N> name
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(p)
    return removed


def load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read this checkpoint file ({' '.join(str(exc).split())})") from None
