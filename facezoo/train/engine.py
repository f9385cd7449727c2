"""The training engine: a backbone under Accelerate (DDP), sharded Partial FC, exact and elastic resume.

One :class:`Trainer` per process. Accelerate starts the process group (``accelerate launch``, torchrun, SLURM, or one
plain process), places the model and wraps the backbone in DDP; facezoo owns what Accelerate does not do for a
sharded classifier: the Partial FC shard of each rank (built after the process group, never prepared), the sample
order (:mod:`facezoo.train.sampler`), the loss-scale agreement (:mod:`facezoo.train.amp`), the learning-rate
schedule (stepped once per optimizer step) and the checkpoints (:mod:`facezoo.train.checkpoint`).

A step (:meth:`Trainer._train_loop`): each micro-batch is augmented and normalized on the device, the backbone runs
under autocast, Partial FC returns the global-batch loss; after the last micro-batch the gradients are unscaled and
checked, and one small all-reduce makes every rank agree on "some gradient or loss is not finite" and "a stop
signal arrived" (the step's one host sync; loss and gradient norm are read only for log lines). A bad step is
skipped on every rank (counted, logged; ``train.max_bad_steps`` in a row stop the run). SIGTERM / SIGINT, to one
process or to the whole process group (data workers ignore them), finish the current step on every rank, write
its checkpoint and stop with exit code 143 / 130; at the last step the checkpoint is the final one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from facezoo.data.sources import count_skipped, restore_skipped
from facezoo.errors import ConfigError, DataError, FacezooError, MissingPathError
from facezoo.losses.partial_fc import SPEC_KEY
from facezoo.train import checkpoint as ckpt
from facezoo.train.amp import LossScaler, autocast, unscale_and_check
from facezoo.train.augment import DeviceAugment
from facezoo.train.config import Recipe, check_micro_batch, save_recipe
from facezoo.train.data import (
    build_eval_sets,
    build_train_source,
    check_inputs,
    ignore_stop_signals,
    max_label,
    stop_signals_blocked,
)
from facezoo.train.sampler import BatchPlan, MicroBatch, RankBatchSampler
from facezoo.train.schedule import create_scheduler

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "train"]

_logger = logging.getLogger(__name__)
_PFC_BLOCK = 1 << 16  # classes per block of the world-size-independent Partial FC initialization
_SKIPPED_STEP_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")
_SECOND_CTRL_C_S = 1.0  # a second SIGINT later than this after the first is a person's second Ctrl-C


def _has_accelerator() -> bool:
    from accelerate.utils import is_mps_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available()


class TrainingError(FacezooError):
    """Training cannot go on (e.g. too many non-finite steps in a row); the last good checkpoint is kept."""


class TrainingInterrupted(FacezooError):
    """A SIGTERM / SIGINT stopped the run after writing a checkpoint; ``signum`` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def _init_partial_fc(pfc: nn.Module, seed: int, kind: str = "normal", std: float = 0.01) -> None:
    """Class centres that do not depend on the number of processes: the matrix is drawn in blocks of ``_PFC_BLOCK``
    classes, each from a generator seeded with (seed, block), and every rank keeps its rows. ``normal``: N(0, std)
    (insightface); ``unit``: uniform(-1, 1) rows scaled to norm 1 (AdaFace's ``kernel.uniform_(-1, 1).renorm_``)."""
    start, stop = pfc.class_start, pfc.class_start + pfc.num_local
    rows = []
    for block in range(start // _PFC_BLOCK, (stop - 1) // _PFC_BLOCK + 1):
        g = torch.Generator().manual_seed(int(seed) * 7919 + block)
        lo = block * _PFC_BLOCK
        n = min(_PFC_BLOCK, pfc.num_classes - lo)
        if kind == "unit":
            w = torch.rand(n, pfc.embed_dim, generator=g) * 2 - 1
            w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            w = torch.randn(n, pfc.embed_dim, generator=g) * std
        rows.append(w[max(start - lo, 0) : min(stop - lo, n)])
    with torch.no_grad():
        pfc.weight.copy_(torch.cat(rows).to(pfc.weight))


@contextlib.contextmanager
def _closing(bar: Any) -> Iterator[Any]:
    """Close a progress bar on the way out; after an error clear it, so the error message gets its own line."""
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


class _LogWindow:
    """The loss and gradient norm since the last log line, kept on the device: the loop reads them on the host only
    when a line is due, so steps in between never wait for the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_loss = torch.zeros((), device=device)  # the step being accumulated, over its micro-batches
        self.grad_norm: Optional[torch.Tensor] = None  # the last step's backbone gradient norm (None: skipped)
        self._open()

    def _open(self) -> None:
        self.loss_sum, self.good_steps, self.start = torch.zeros((), device=self.device), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.step_loss = self.step_loss + loss

    def end_step(self, grad_norm: Optional[torch.Tensor]) -> None:
        """Close the step: a good step (with its gradient norm) counts in the window's mean loss, a skipped one not."""
        if grad_norm is not None:
            self.loss_sum, self.good_steps = self.loss_sum + self.step_loss, self.good_steps + 1
        self.grad_norm = grad_norm
        self.step_loss = torch.zeros((), device=self.device)

    def read(self, batch: int) -> Tuple[float, float, float]:
        """(mean loss of the good steps, last gradient norm, images/s) since the last read; starts a new window."""
        mean = float(self.loss_sum) / self.good_steps if self.good_steps else float("nan")
        norm = float(self.grad_norm) if self.grad_norm is not None else float("nan")
        elapsed = time.perf_counter() - self.start  # after the reads: the device has caught up
        speed = self.good_steps * batch / elapsed if elapsed > 0 else 0.0
        self._open()
        return mean, norm, speed


class Trainer:
    """Builds everything a recipe names, then :meth:`fit` trains, evaluates, checkpoints and exports."""

    def __init__(
        self, recipe: Recipe, output_dir: os.PathLike, resume: Optional[str] = None, progress: bool = True
    ) -> None:
        self.recipe, self.output_dir, self.progress = recipe, Path(output_dir), progress
        self.resume_arg = resume
        self._stop_signal = 0
        self._saved_step: Optional[int] = None
        self._setup()

    # ------------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        cfg = self.recipe
        log_with = None
        if cfg.train.tensorboard:
            from accelerate.utils import is_tensorboard_available

            if is_tensorboard_available():
                log_with = "tensorboard"
            else:
                _logger.warning("train.tensorboard: the tensorboard package is not installed; no TensorBoard logs")
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False, bucket_cap_mb=16)
        # mixed precision is the recipe's (train.mixed_precision), run by facezoo's autocast + loss scaler
        # without an accelerator, cpu=True lets torchrun / accelerate launch processes form a gloo group
        self.accelerator = acc = Accelerator(
            mixed_precision="no",
            log_with=log_with,
            project_dir=str(self.output_dir),
            kwargs_handlers=[ddp],
            cpu=not _has_accelerator(),
        )
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        self._setup_logging()
        self.resume_path = self._resolve_resume()
        if self.resume_arg == "latest" and self.resume_path is None:
            _logger.info("--resume latest: no checkpoint in %s yet, starting from step 0", self.output_dir)
        if cfg.train.mixed_precision == "fp16" and self.device.type == "cpu":
            _logger.warning(
                "train.mixed_precision fp16 on the CPU is slow and rarely useful; bf16 or no is the usual choice there"
            )

        check_inputs(cfg, self.world)  # a typo fails before anything is built or rendered
        set_seed(cfg.train.seed)
        self.backbone = self._build_model()
        self._freeze()
        if self._trains_batchnorm():
            check_micro_batch(cfg.data.batch_size, cfg.train.grad_accum, self.world)
        self.embed_dim = int(getattr(self.backbone, "embed_dim", None) or self.backbone.num_features)
        if self.resume_path is not None:  # what is known without the data: refuse another run's checkpoint now
            known = {k: v for k, v in self.identity().items() if v is not None}
            ckpt.check_identity(ckpt.read_trainer_state(self.resume_path).get("identity", {}), known, self.resume_path)
        self.input_size = self._input_size()
        self.source = build_train_source(cfg, self.input_size, progress=self.progress and self.is_main)
        if isinstance(self.source, IterableDataset):
            raise ConfigError(
                f"data.train {cfg.data.train!r} is a streamed (iterable) dataset, which cannot be "
                "sampled or resumed exactly; use a local copy (facezoo data convert) or a map-style "
                "Hugging Face dataset"
            )
        self.num_classes = int(cfg.data.num_classes or self.source.num_classes)
        labels = ckpt.source_labels(self.source)
        top = int(labels.max()) if labels is not None and len(labels) else max_label(self.source)
        if top is not None and top >= self.num_classes:
            raise DataError(
                f"data.train {cfg.data.train}: labels go up to {top}, but num_classes is "
                f"{self.num_classes} (labels must be 0..num_classes-1; set data.num_classes)"
            )
        self._check_identities(labels)
        self.data_fingerprint = ckpt.data_fingerprint(cfg.data, len(self.source), labels)
        self.plan = BatchPlan(
            len(self.source), cfg.data.batch_size, cfg.train.grad_accum, self.world, self.rank, cfg.train.seed
        )
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.plan.steps_per_epoch
        self.eval_sets = build_eval_sets(cfg, progress=self.progress and self.is_main)

        # model, loss, optimizer
        from facezoo.losses import PartialFC, create_margin_loss

        head = create_margin_loss(cfg.loss.name, **self._loss_kwargs())
        self.pfc = PartialFC(head, self.embed_dim, self.num_classes, cfg.loss.sample_rate).to(self.device)
        _init_partial_fc(self.pfc, cfg.train.seed, cfg.loss.center_init)
        self.backbone.to(self.device)
        if cfg.model.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if cfg.model.grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        model: nn.Module = self.backbone
        if cfg.model.compile:
            model = torch.compile(model)
        with warnings.catch_warnings():  # torch >= 2.14 prefers forward_sync_buffers; older torch has only this
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            self.model = acc.prepare(model)
        self.optimizer = self._build_optimizer()
        self.scheduler = create_scheduler(
            self.optimizer, self.total_steps, cfg.train.epochs, cfg.schedule, cfg.optim.lr
        )
        self.scaler = LossScaler(cfg.train.mixed_precision == "fp16")
        cfg_pre = self.backbone.pretrained_cfg if hasattr(self.backbone, "pretrained_cfg") else {}
        self.augment = DeviceAugment(
            cfg.data.augment,
            self.input_size,
            cfg_pre.get("mean", (0.5,) * 3),
            cfg_pre.get("std", (0.5,) * 3),
            cfg.train.seed,
            cfg.model.channels_last,
        )

        # where the run stands
        self.step, self.epoch, self.offset = 0, 0, 0
        self.bad_streak, self.skipped = 0, 0
        if self.resume_path is not None:
            self._load_checkpoint(self.resume_path)
        else:
            torch.manual_seed(cfg.train.seed * 1000 + self.rank)  # rank-local randomness (dropout, PFC sampling)
        if self.is_main:
            save_recipe(cfg, self.output_dir / "recipe.yaml")
        self._init_trackers()
        _logger.info(
            "training %s on %s: %d images, %d classes, %d process(es) on %s, global batch %d (%d per process and "
            "micro-batch), %d steps (%d per epoch), %s%s",
            self.arch,
            cfg.data.train,
            len(self.source),
            self.num_classes,
            self.world,
            self.device,
            cfg.data.batch_size,
            self.plan.local_batch,
            self.total_steps,
            self.plan.steps_per_epoch,
            f"mixed precision {cfg.train.mixed_precision}",
            f", resumed from {self.resume_path} at step {self.step}" if self.resume_path else "",
        )

    def _resolve_resume(self) -> Optional[Path]:
        """``--resume`` to a verified checkpoint folder: rank 0 verifies (reading every file once) and tells the
        others, so all ranks resume from the same folder or raise the same one-line error."""
        if self.resume_arg is None:
            return None
        result: List[Any] = [None, None]
        if self.is_main:
            try:
                found = ckpt.resolve_resume(self.resume_arg, self.output_dir)
                result = [None if found is None else str(found), None]
            except FacezooError as exc:
                if self.world == 1:
                    raise
                result = [None, (isinstance(exc, MissingPathError), str(exc))]
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(result, from_process=0)
        if result[1] is not None:
            missing, message = result[1]
            raise (MissingPathError if missing else ckpt.CheckpointError)(message)
        return None if result[0] is None else Path(result[0])

    def _trains_batchnorm(self) -> bool:
        """Whether the backbone has a BatchNorm layer outside the frozen modules (those run in eval mode)."""
        frozen = {id(m) for f in self.frozen for m in f.modules()}
        return any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen for m in self.backbone.modules()
        )

    def _check_identities(self, labels: Any) -> None:
        """Refuse a training set of fewer than two identities (a softmax over one class learns nothing)."""
        data = self.recipe.data.train
        if self.num_classes < 2:
            raise DataError(
                f"data.train {data}: {self.num_classes} identity (class); training needs at least two identities"
            )
        if labels is not None and len(labels):
            import numpy as np

            found = np.unique(labels)
            if len(found) < 2:
                raise DataError(
                    f"data.train {data}: every image has label {int(found[0])} (1 identity); training needs at "
                    "least two identities"
                )

    def _setup_logging(self) -> None:
        root = logging.getLogger("facezoo")
        if self.is_main:
            handler = logging.FileHandler(self.output_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
            root.setLevel(min(root.level or logging.INFO, logging.INFO))
            self._log_handler: Optional[logging.Handler] = handler
        else:
            root.setLevel(logging.WARNING)
            self._log_handler = None

    def _build_model(self) -> nn.Module:
        import timm

        from facezoo.models import create_model

        m = self.recipe.model
        kwargs: Dict[str, Any] = dict(m.args)
        if "embed_dim" in kwargs or "num_classes" in kwargs:
            raise ConfigError(
                "model.args: give the embedding size as model.embed_dim (num_classes is the training set's)"
            )
        from facezoo.models.pretrained import is_pretrained_tag

        name = m.name
        hub = (m.pretrained or "").startswith(("hf-hub:", "local-dir:"))
        tag = m.pretrained if is_pretrained_tag(m.pretrained) else None  # e.g. iresnet100.adaface_webface12m
        if hub:
            name = m.pretrained
        if tag is not None and name != tag.split(".", 1)[0]:
            raise ConfigError(
                f"model.pretrained={tag!r} holds weights of {tag.split('.', 1)[0]}, but model.name is {name!r}; "
                f"set model.name={tag.split('.', 1)[0]}"
            )
        takes_embed_dim = (
            not hub
            and name is not None
            and timm.is_model(name)
            and timm.models.model_entrypoint(name).__module__.startswith("facezoo")
        )
        if takes_embed_dim or "embed_dim" in m.model_fields_set:
            kwargs["embed_dim"] = m.embed_dim
        if "img_size" in kwargs:
            size = kwargs["img_size"]
            size = (size, size) if isinstance(size, int) else tuple(size)
            kwargs["pretrained_cfg_overlay"] = dict(input_size=(3, *size))
        checkpoint = m.pretrained if m.pretrained and not hub and tag is None else None
        try:
            model = create_model(tag or name, checkpoint=checkpoint, num_classes=0, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.args: {exc}") from None
        self.arch = model.pretrained_cfg.get("architecture", name) if hasattr(model, "pretrained_cfg") else name
        return model

    def _input_size(self) -> Tuple[int, int, int]:
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        return tuple(cfg.get("input_size", (3, 112, 112)))  # type: ignore[return-value]

    def _loss_kwargs(self) -> Dict[str, Any]:
        loss = self.recipe.loss
        kw = dict(loss.args, s=loss.s)
        if loss.m is not None:
            kw["m"] = loss.m
        return kw

    def _freeze(self) -> None:
        prefixes = self.recipe.model.freeze
        if not prefixes:
            self.frozen: List[nn.Module] = []
            return
        names = dict(self.backbone.named_modules())
        for p in prefixes:
            if p not in names:
                top = [n for n, _ in self.backbone.named_children()]
                from facezoo.errors import did_you_mean

                raise ConfigError(
                    f"model.freeze: no module {p!r} in {self.arch}{did_you_mean(p, list(names))} "
                    f"(top-level modules: {', '.join(top)})"
                )
        self.frozen = [names[p] for p in prefixes]
        for mod in self.frozen:
            for param in mod.parameters():
                param.requires_grad_(False)
        _logger.info(
            "frozen: %s (%d parameters)",
            ", ".join(prefixes),
            sum(p.numel() for mod in self.frozen for p in mod.parameters()),
        )

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optim
        no_decay_ids = set()
        if o.no_weight_decay_on_bn:
            for mod in self.backbone.modules():
                if isinstance(mod, nn.modules.batchnorm._NormBase):
                    no_decay_ids.update(id(p) for p in mod.parameters(recurse=False))
        decay = [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in no_decay_ids]
        no_decay = [p for p in self.backbone.parameters() if p.requires_grad and id(p) in no_decay_ids]
        lr_b = o.lr * o.backbone_lr_scale
        groups = [dict(params=decay, lr=lr_b, weight_decay=o.weight_decay, name="backbone")]
        if no_decay:
            groups.append(dict(params=no_decay, lr=lr_b, weight_decay=0.0, name="backbone_no_decay"))
        groups.append(dict(params=[self.pfc.weight], lr=o.lr, weight_decay=o.weight_decay, name="partial_fc"))
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def identity(self) -> Dict[str, Any]:
        """What a checkpoint must share with this recipe to be resumed (num_classes is None until the data is open)."""
        return {
            "architecture": self.arch,
            "num_classes": getattr(self, "num_classes", None),
            "embed_dim": self.embed_dim,
            "loss": self.recipe.loss.name,
            "model_args": json.loads(json.dumps(self.recipe.model.args)),
        }

    def _init_trackers(self) -> None:
        if self.accelerator.log_with is None or not self.accelerator.log_with:
            self.trackers = False
            return
        self.accelerator.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": self.step + 1}})
        self.trackers = True

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _backbone_optim_state(self) -> Dict[str, torch.Tensor]:
        out = {}
        for name, p in self.backbone.named_parameters():
            for k, v in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    out[f"{name}.{k}"] = v
        return out

    def _pfc_state(self) -> Dict[str, torch.Tensor]:
        state = {k: v for k, v in self.pfc.state_dict().items()}
        for k, v in self.optimizer.state.get(self.pfc.weight, {}).items():
            if torch.is_tensor(v):
                state[f"optim.{k}"] = v
        return state

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<step>`` (every rank calls this), then prune to ``train.keep_last``."""
        cfg = self.recipe
        skipped_records = self._skipped_records()  # every rank takes part

        def rank_files(folder: Path) -> List[Path]:
            shard, rng = folder / ckpt.pfc_shard_name(self.rank, self.world), folder / ckpt.rng_name(self.rank)
            ckpt.save_tensors(self._pfc_state(), shard)
            ckpt.save_rng_state(rng)
            return [shard, rng]

        def main_files(folder: Path) -> None:
            ckpt.save_tensors(self.backbone.state_dict(), folder / "backbone.safetensors")
            ckpt.save_tensors(self._backbone_optim_state(), folder / "backbone_optim.safetensors")
            ckpt.save_json(
                {
                    "checkpoint_format": ckpt.CHECKPOINT_FORMAT,
                    "step": self.step,
                    "epoch": self.epoch,
                    "offset": self.offset,
                    "world_size": self.world,
                    "global_batch": cfg.data.batch_size,
                    "grad_accum": cfg.train.grad_accum,
                    "num_samples": len(self.source),
                    "total_steps": self.total_steps,
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "bad_streak": self.bad_streak,
                    "skipped": self.skipped,
                    "skipped_records": skipped_records,
                    "identity": self.identity(),
                    "data": self.data_fingerprint,
                    "optimizer": cfg.optim.name,
                    "time": time.time(),
                },
                folder / ckpt.STATE_FILE,
            )

        path = ckpt.write_checkpoint(
            self.output_dir,
            self.step,
            self.rank,
            self.world,
            self.accelerator.wait_for_everyone,
            rank_files,
            main_files,
            gather=self._gather,
        )
        if self.is_main:
            for removed in ckpt.prune_checkpoints(self.output_dir, cfg.train.keep_last, current=self.step):
                _logger.info("removed old checkpoint %s (train.keep_last=%d)", removed.name, cfg.train.keep_last)
            _logger.info("checkpoint %s", path)
        self.accelerator.wait_for_everyone()
        self._saved_step = self.step
        return path

    def _gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank (the checkpoint's file digests)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def _load_checkpoint(self, path: Path) -> None:

        state = ckpt.read_trainer_state(path)

        def field(key: str) -> Any:
            return ckpt.state_field(state, key, path)

        ckpt.check_identity(state.get("identity", {}), self.identity(), path)
        if state.get("optimizer", self.recipe.optim.name) != self.recipe.optim.name:
            raise ConfigError(
                f"{path} was trained with optim.name={state['optimizer']}; resuming with "
                f"{self.recipe.optim.name} would drop its optimizer state"
            )
        if state.get("num_samples") not in (None, len(self.source)):
            raise ConfigError(
                f"{path} was trained on {state['num_samples']} images, data.train now has "
                f"{len(self.source)}: --resume continues the same data"
            )
        if "data" in state:  # checkpoints before data fingerprints have none
            ckpt.check_data(state["data"], self.data_fingerprint, path)
        saved_world, saved_step = int(field("world_size")), int(field("step"))
        scheduler_state, scaler_state = field("scheduler"), field("scaler")
        self._load_backbone(path)
        self._load_partial_fc(path, saved_world)
        saved_base = list(scheduler_state.get("base_lrs", []))
        self.scheduler.load_state_dict(scheduler_state)
        # the recipe's learning rates win over the checkpoint's (a resumed run may lower optim.lr on purpose)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        if saved_base and saved_base != self.scheduler.base_lrs:
            _logger.warning(
                "optim.lr / optim.backbone_lr_scale changed since the checkpoint: base learning rates %s "
                "-> %s from step %d",
                saved_base,
                self.scheduler.base_lrs,
                saved_step,
            )
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor  # load_state_dict restores the schedule's position, not the groups' lr
        self.scaler.load_state_dict(scaler_state)
        self.step, self.epoch, self.offset = saved_step, int(field("epoch")), int(field("offset"))
        self.bad_streak, self.skipped = int(state.get("bad_streak", 0)), int(state.get("skipped", 0))
        restore_skipped(self.source, int(state.get("skipped_records", 0)) if self.is_main else 0)  # summed over ranks
        if field("global_batch") != self.recipe.data.batch_size:
            _logger.warning(
                "data.batch_size changed from %d to %d: the epoch continues at sample %d",
                state["global_batch"],
                self.recipe.data.batch_size,
                self.offset,
            )
        if saved_world == self.world:
            ckpt.load_rng_state(path / ckpt.rng_name(self.rank))  # a missing file is an error, never a re-seed
        else:  # elastic resume: the RNG streams of W processes do not map onto W' others
            torch.manual_seed(self.recipe.train.seed * 1000 + self.rank + 7 * self.step)
            _logger.warning(
                "resumed on %d process(es) from a checkpoint of %d: the process count changed, so Partial FC was "
                "re-sharded and the random states re-seeded (not bit-identical to an uninterrupted run)",
                self.world,
                saved_world,
            )

    def _load_backbone(self, path: Path) -> None:
        """The backbone's weights and its optimizer state (by parameter name) from a checkpoint folder."""
        from facezoo.train.checkpoint import load_tensors

        weights_file, optim_file = path / "backbone.safetensors", path / "backbone_optim.safetensors"
        try:
            self.backbone.load_state_dict(load_tensors(weights_file), strict=True)
        except RuntimeError as exc:
            raise ckpt.CheckpointError(
                f"{weights_file} does not fit {self.arch} ({' '.join(str(exc).split())[:300]})"
            ) from None
        optim = load_tensors(optim_file)
        used = set()
        for name, p in self.backbone.named_parameters():
            entries = {
                k[len(name) + 1 :]: v
                for k, v in optim.items()
                if k.startswith(name + ".") and "." not in k[len(name) + 1 :]
            }
            if entries:
                self.optimizer.state[p] = {k: v.to(p.device) for k, v in entries.items()}
                used.update(f"{name}.{k}" for k in entries)
        unknown = sorted(set(optim) - used)
        if unknown:
            raise ckpt.CheckpointError(
                f"{optim_file}: optimizer state for parameters this model does not have ({', '.join(unknown[:3])})"
            )

    def _load_partial_fc(self, path: Path, saved_world: int) -> None:
        """This rank's class centres, margin-head state and their optimizer rows, re-sharded from every saved rank's
        shard (any saved process count)."""
        from facezoo.losses import read_shard_range
        from facezoo.train.checkpoint import load_tensors

        shards = [path / ckpt.pfc_shard_name(r, saved_world) for r in range(saved_world)]
        first = load_tensors(shards[0])  # a missing shard is named here or below
        for shard in shards[1:]:
            if not shard.is_file():
                raise ckpt.CheckpointError(f"{shard} is missing")
        if "weight" not in first:
            raise ckpt.CheckpointError(f"{shards[0]}: no 'weight'; not a facezoo Partial FC shard")
        optim_keys = [k for k in first if k.startswith("optim.")]
        row_keys = [k for k in optim_keys if first[k].shape == first["weight"].shape]  # momentum, exp_avg, ...
        try:
            rows = read_shard_range(shards, self.pfc.class_start, self.pfc.num_local, ["weight"] + row_keys)
        except (ValueError, KeyError, OSError) as exc:
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ckpt.CheckpointError(f"{path / 'partial_fc'}: {' '.join(text.split())}") from None
        head = {k: v for k, v in first.items() if k.startswith("margin_loss.")}  # the same on every rank
        try:
            self.pfc.load_state_dict(
                {"weight": rows.pop("weight"), SPEC_KEY: getattr(self.pfc, SPEC_KEY), **head}, strict=True
            )
        except RuntimeError as exc:
            raise ckpt.CheckpointError(
                f"{shards[0]} does not fit loss {self.recipe.loss.name} ({' '.join(str(exc).split())[:300]})"
            ) from None
        pfc_optim = {k[len("optim.") :]: v.to(self.device) for k, v in rows.items()}
        pfc_optim.update({k[len("optim.") :]: first[k] for k in optim_keys if k not in row_keys})  # AdamW's step
        if pfc_optim:
            self.optimizer.state[self.pfc.weight] = pfc_optim

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self, stop_at: Optional[int] = None) -> Path:
        """Train to ``total_steps`` (evaluating, checkpointing, logging), then evaluate and export; returns the
        output folder. ``stop_at``: stop after that step of the schedule instead, with a checkpoint and without the
        final evaluation and export (continue later with ``resume='latest'``)."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        end = self.total_steps if stop_at is None else min(int(stop_at), self.total_steps)
        try:
            if self.step < end:
                self._train_loop(end)
            if end < self.total_steps:
                if self._saved_step != self.step:
                    self.save_checkpoint()
                _logger.info(
                    "stopped at step %d of %d as asked; continue with --resume latest", self.step, self.total_steps
                )
                return self.output_dir
            return self._finish()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.trackers:
                self.accelerator.end_training()
            if self._log_handler is not None:
                logging.getLogger("facezoo").removeHandler(self._log_handler)
                self._log_handler.close()

    def _train_loop(self, end: int, checkpoint_at_end: bool = True) -> None:
        """Steps up to ``end``: forward and backward for each micro-batch, then the optimizer step and what is due
        after it. A checkpoint at ``end`` when it is before the last step (``checkpoint_at_end``; the last one is
        :meth:`_finish`'s); a stop signal ends the run at the step every process agreed on, after its checkpoint."""
        accum = self.recipe.train.grad_accum
        self._train_mode()
        self._window = _LogWindow(self.device)
        batches = self._micro_batches(end)
        with self._progress_bar() as bar, contextlib.closing(batches):
            for images, labels, mb in batches:
                self._forward_backward(images, labels, mb)
                if mb.micro < accum - 1:
                    continue  # gradient accumulation: the step ends with its last micro-batch
                stop = self._optimizer_step()
                epoch_end = self._advance(mb)
                bar.update(self.recipe.data.batch_size)
                self._stop_if_too_many_bad_steps()
                self._log_if_due(bar, mb.epoch, epoch_end)
                self._evaluate_if_due()
                self._checkpoint_if_due(end, epoch_end, stop, checkpoint_at_end)
                if stop and self.step < self.total_steps:  # at the last step _finish checkpoints, then stops
                    raise self._interrupted()

    def _train_mode(self) -> None:
        self.backbone.train()
        for mod in self.frozen:
            mod.eval()

    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator[Any]:
        """A tqdm bar in images (main process, ``progress``), with log lines printed above it."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        batch = self.recipe.data.batch_size
        bar = tqdm(
            total=self.total_steps * batch,
            initial=self.step * batch,
            unit="img",
            unit_scale=True,
            disable=not (self.progress and self.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        redirect = logging_redirect_tqdm(loggers=[logging.root]) if self.is_main else contextlib.nullcontext()
        with _closing(bar), redirect:
            yield bar

    def _loader(self, end: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This process's batches from step ``self.step`` to ``end``. The workers ignore SIGTERM / SIGINT (the main
        process stops them after its checkpoint) and start with those signals held back, so none is lost to them."""
        from facezoo.data import collate_faces

        sampler = RankBatchSampler(self.plan, self.step, end, self.epoch, self.offset)
        workers = self.recipe.data.num_workers
        loader = DataLoader(
            self.source,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_faces,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator(),
            prefetch_factor=4 if workers else None,
            worker_init_fn=ignore_stop_signals if workers else None,
        )
        with stop_signals_blocked():  # the workers start here
            return iter(loader)

    def _micro_batches(self, end: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor, MicroBatch]]:
        """``(images, labels, micro-batch)`` from the loader, in the plan's order, labels checked."""
        plan = self.plan.iterate(self.step, end, self.epoch, self.offset)
        batches = self._loader(end)
        try:
            for (images, labels), mb in zip(batches, plan):
                self._check_labels(labels, mb.indices)
                yield images, labels, mb
        finally:
            # Shut the workers down here, whatever ended the loop: they ignore SIGTERM, so a worker left to the
            # garbage collector (an error's traceback keeps the iterator alive) would hang multiprocessing's exit
            # handler, which can only terminate() it.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _check_labels(self, labels: torch.Tensor, indices: List[int]) -> None:
        lo, hi = int(labels.min()), int(labels.max())  # the loader's host tensor: no device sync
        if lo < 0 or hi >= self.num_classes:
            bad = int(((labels < 0) | (labels >= self.num_classes)).nonzero()[0])
            raise DataError(
                f"data.train {self.recipe.data.train}: sample {indices[bad]} has label {int(labels[bad])}, "
                f"outside 0..{self.num_classes - 1} (set data.num_classes)"
            )

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, mb: MicroBatch) -> None:
        """One micro-batch: device augmentation, the backbone under autocast, Partial FC, the scaled backward
        (DDP syncs gradients only with the step's last micro-batch)."""
        cfg = self.recipe
        accum = cfg.train.grad_accum
        x = self.augment(images.to(self.device, non_blocking=True), torch.as_tensor(mb.indices), mb.epoch)
        y = labels.to(self.device, non_blocking=True)
        last = mb.micro == accum - 1
        sync = contextlib.nullcontext() if last or self.world == 1 else self.accelerator.no_sync(self.model)
        with sync:
            with autocast(self.device, cfg.train.mixed_precision):
                emb = self.model(x)
            loss = self.pfc(emb.float(), y)
            self.scaler.scale_loss(loss / accum).backward()
        self._window.add(loss.detach() / accum)

    def _optimizer_step(self) -> bool:
        """Unscale and check the gradients, agree with the other processes, then step or skip; the schedule
        advances either way. Returns whether the processes agreed to stop after this step."""
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        found = unscale_and_check(trainable + [self.pfc.weight], self.scaler.scale, self.device, self._window.step_loss)
        bad, stop = self._agree(found)
        if bad:
            self._skip_step()
        else:
            self._apply_step(trainable)
        self.optimizer.zero_grad(set_to_none=True)
        self._lr = self.optimizer.param_groups[-1]["lr"]  # the rate this step used
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message=_SKIPPED_STEP_WARNING)
            self.scheduler.step()
        return stop

    def _agree(self, bad: torch.Tensor) -> Tuple[bool, bool]:
        """(some rank's step is not finite, some rank got a stop signal), the same on every rank: one all-reduce
        (max) of two flags, read on the host once. This is the loop's one host sync per step, and it cannot wait
        for a log step: the skip decides on the host whether the optimizer steps and how the loss scale and the
        skip counters move, and every rank must see a stop at the same step, or one would enter a collective (the
        next step's gradient all-reduce, a checkpoint barrier) the others have left. The stop flag must be read
        each step anyway, so the non-finite flag costs nothing more."""
        stop = torch.full((1,), float(self._stop_signal > 0), device=bad.device)  # a fill, not a host copy
        flags = torch.cat([bad.reshape(1).float(), stop])
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        found, stopped = flags.tolist()
        return found > 0, stopped > 0

    def _skip_step(self) -> None:
        """A non-finite loss or gradient on some rank: no update anywhere, counted, the loss scale backs off."""
        self.skipped += 1
        self.bad_streak += 1
        self.scaler.update(True)
        self._window.end_step(None)
        _logger.warning(
            "step %d: non-finite loss or gradient on some rank; step skipped on all ranks (%d in a row, %d in total%s)",
            self.step + 1,
            self.bad_streak,
            self.skipped,
            f", loss scale now {self.scaler.scale:g}" if self.scaler.enabled else "",
        )

    def _apply_step(self, trainable: List[nn.Parameter]) -> None:
        """Clip the backbone's gradients (``optim.clip_grad_norm``) and step; the norm stays on the device."""
        clip = self.recipe.optim.clip_grad_norm
        norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        if clip:
            torch.nn.utils.clip_grads_with_norm_(trainable, clip, norm)
        self.optimizer.step()
        self.scaler.update(False)
        self.bad_streak = 0
        self._window.end_step(norm)

    def _advance(self, mb: MicroBatch) -> bool:
        """Count the step and move the data position past it; True when that ended an epoch."""
        self.step += 1
        self.epoch, self.offset = self.plan.position_after(mb.epoch, mb.offset)
        return self.epoch != mb.epoch

    def _stop_if_too_many_bad_steps(self) -> None:
        limit = self.recipe.train.max_bad_steps
        if self.bad_streak >= limit:
            raise TrainingError(
                f"{self.bad_streak} steps in a row had a non-finite loss or gradient (train.max_bad_steps="
                f"{limit}); stopped at step {self.step}. The last good checkpoint is "
                f"{ckpt.latest_checkpoint(self.output_dir) or 'none (no checkpoint was written yet)'}; "
                "lower optim.lr, enable optim.clip_grad_norm, or use bf16 instead of fp16"
            )

    def _log_if_due(self, bar: Any, epoch: int, epoch_end: bool) -> None:
        """Every ``train.log_every`` steps, at epoch ends and at the last step: the log line, the progress bar and
        TensorBoard, with the mean loss of the window's good steps (the loop's only host reads of loss and norm)."""
        if not (self.step % self.recipe.train.log_every == 0 or self.step == self.total_steps or epoch_end):
            return
        mean_loss, grad_norm, speed = self._window.read(self.recipe.data.batch_size)
        bar.set_postfix(step=self.step, loss=f"{mean_loss:.3f}", lr=f"{self._lr:.3g}")
        _logger.info(
            "step %d/%d epoch %d loss %.4f lr %.4g grad_norm %.3g %.1f img/s%s",
            self.step,
            self.total_steps,
            epoch,
            mean_loss,
            self._lr,
            grad_norm,
            speed,
            f" loss_scale {self.scaler.scale:g}" if self.scaler.enabled else "",
        )
        self._log(
            {
                "train/loss": mean_loss,
                "train/lr": self._lr,
                "train/samples_per_s": speed,
                "train/grad_norm": grad_norm,
                "train/grad_scale": self.scaler.scale,
                "train/skipped_steps": self.skipped,
            }
        )
        self._last_loss = mean_loss

    def _log(self, values: Dict[str, float]) -> None:
        if self.trackers:
            self.accelerator.log({k: v for k, v in values.items() if v == v}, step=self.step)

    def _evaluate_if_due(self) -> None:
        """Every ``eval.every`` steps before the last (the final evaluation is :meth:`_finish`'s)."""
        every = self.recipe.eval.every
        if every and self.step % every == 0 and self.step < self.total_steps:
            self.evaluate()
            self._train_mode()

    def _checkpoint_if_due(self, end: int, epoch_end: bool, stop: bool, checkpoint_at_end: bool) -> None:
        """Every ``train.checkpoint_every`` steps, at epoch ends, on a stop and at ``end``; never at the last step
        (:meth:`_finish` writes that one)."""
        every = self.recipe.train.checkpoint_every
        due = (every and self.step % every == 0) or epoch_end or stop or (self.step == end and checkpoint_at_end)
        if due and self.step < self.total_steps:
            self.save_checkpoint()

    # ------------------------------------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM / SIGINT: stop at the end of the current step (see :meth:`_agree`). A repeat of the stop (a
        launcher forwarding the signal the process group already got) changes nothing; a second Ctrl-C a moment
        later stops at once, without a checkpoint."""
        if self._stop_signal:
            if signum == signal.SIGINT and time.monotonic() - self._stop_time > _SECOND_CTRL_C_S:
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            return
        self._stop_signal, self._stop_time = signum, time.monotonic()
        _logger.warning(
            "%s: finishing step %d, writing a checkpoint, then stopping", signal.Signals(signum).name, self.step + 1
        )

    def _stop_agreed(self) -> bool:
        """Whether some rank got a stop signal, the same answer on every rank (one small all-reduce)."""
        return self._agree(torch.zeros(1, device=self.device))[1]

    def _interrupted(self, rest: str = "") -> TrainingInterrupted:
        """The error a stop ends the run with; the checkpoint it names was written at this step."""
        signum = self._stop_signal or int(signal.SIGTERM)
        return TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at step {self.step}/{self.total_steps}: checkpoint "
            f"{self.output_dir / ckpt.CHECKPOINT_DIR / ckpt.step_dir_name(self.step)}; continue with "
            f"--resume latest{rest}",
            signum,
        )

    # ------------------------------------------------------------------------------------------------ eval, end
    def evaluate(self) -> Dict[str, Dict[str, Any]]:
        """Verification on ``eval.targets`` (every process takes part); logs, TensorBoard and ``summary.csv``."""
        from facezoo.eval import run_verification_sets

        if not self.eval_sets:
            return {}
        e = self.recipe.eval
        results = run_verification_sets(
            self.backbone,
            self.eval_sets,
            e.batch_size,
            self.device,
            flip=e.flip,
            accelerator=self.accelerator if self.world > 1 else None,
            progress=False,
        )
        line = "  ".join(
            f"{name} {100 * r['accuracy']:.2f}±{100 * r['accuracy_std']:.2f}" for name, r in results.items()
        )
        _logger.info("eval at step %d: %s", self.step, line)
        self._log({f"eval/{name}/accuracy": r["accuracy"] for name, r in results.items()})
        if self.is_main:
            self._summary_row(results)
        return results

    def _summary_row(self, results: Dict[str, Dict[str, Any]]) -> None:
        path = self.output_dir / "summary.csv"
        row: Dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch if self.offset else self.epoch,
            "train_loss": round(getattr(self, "_last_loss", float("nan")), 6),
            "lr": self.optimizer.param_groups[-1]["lr"],
        }
        for name, r in results.items():
            row[f"{name}_accuracy"] = round(r["accuracy"], 6)
            row[f"{name}_accuracy_std"] = round(r["accuracy_std"], 6)
        rows = []
        if path.is_file():  # a resumed run: keep the rows up to its step, so no step appears twice
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < self.step]
        rows.append(row)
        fields = list(row)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)

    def _finish(self) -> Path:
        """The end: a final checkpoint, the final evaluation (``eval.json``) and the export folder. A stop signal
        during the last step (or after it) ends the run after the checkpoint; ``--resume latest`` then evaluates
        and exports."""
        from facezoo.eval import report

        latest = ckpt.latest_checkpoint(self.output_dir)
        if self._saved_step != self.step and (latest is None or latest.name != ckpt.step_dir_name(self.step)):
            self.save_checkpoint()
        if self._stop_agreed():
            raise self._interrupted(" (it runs the final evaluation and export)")
        skipped_records = self._report_skipped_records()
        results = self.evaluate() if self.eval_sets else {}
        doc = None
        if results and self.is_main:
            doc = report.build_results(
                self.arch,
                results,
                None,
                extra={
                    "checkpoint": str(self.output_dir / ckpt.CHECKPOINT_DIR / ckpt.step_dir_name(self.step)),
                    "flip": self.recipe.eval.flip,
                    "nfolds": 10,
                    "step": self.step,
                    "skipped_records": skipped_records,
                },
            )
            tmp = self.output_dir / "eval.json.tmp"
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, self.output_dir / "eval.json")
        if self.recipe.export.enabled and self.is_main:
            self._export(doc)
        self.accelerator.wait_for_everyone()
        _logger.info("done: %s", self.output_dir)
        return self.output_dir

    def _skipped_records(self) -> int:
        """Unreadable samples skipped under ``data.on_error=skip`` in the whole run: every rank's and its data
        workers', with the count a resumed checkpoint carried (a collective: every rank calls it)."""
        n = torch.tensor([count_skipped(self.source)], dtype=torch.int64, device=self.device)
        return int(self.accelerator.reduce(n, "sum").item()) if self.world > 1 else int(n.item())

    def _report_skipped_records(self) -> int:
        """The run's skipped-sample count, logged once (log and TensorBoard ``data/skipped_records``)."""
        n = self._skipped_records()
        if n or self.recipe.data.on_error == "skip":
            _logger.warning("data.on_error=skip: %d unreadable sample(s) skipped in this run", n)
            self._log({"data/skipped_records": n})
        return n

    def _export(self, results: Optional[Dict[str, Any]]) -> None:
        from facezoo.hub import save_pretrained

        e = self.recipe.export
        folder = save_pretrained(
            self.backbone.eval(),
            self.output_dir / "export",
            results=results,
            training=self.recipe.model_dump(mode="json"),
            base_model=self.recipe.model.pretrained,
            datasets=e.datasets or None,
            license=e.license,
            overwrite=True,
        )
        _logger.info("exported %s (load with timm.create_model('local-dir:%s', pretrained=True))", folder, folder)


def train(
    recipe: Recipe,
    output_dir: os.PathLike,
    resume: Optional[str] = None,
    progress: bool = True,
    stop_at: Optional[int] = None,
) -> Path:
    """Train ``recipe`` into ``output_dir`` (``resume``: ``'latest'`` or a checkpoint path; ``stop_at``: see
    :meth:`Trainer.fit`); the Python API of ``facezoo train``."""
    return Trainer(recipe, output_dir, resume=resume, progress=progress).fit(stop_at=stop_at)
