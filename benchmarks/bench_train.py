"""Training throughput: facezoo's engine vs a plain PyTorch loop written like insightface's ``train_v2.py``.

Both train the same backbone with the same Partial FC + CombinedMarginLoss (ArcFace run of the GWP paper: m3 0.4),
SGD (momentum 0.9, wd 5e-4, two parameter groups), the same batch, dtype and threads, on the same uint8 images held
in memory. The reference does what ``train_v2`` does per iteration: normalize + random flip on the host (its
transforms), ``backbone(img)`` under autocast (fp16 / bf16) or not, ``module_partial_fc(embeddings, labels)``,
backward (through its GradScaler for fp16), ``clip_grad_norm_(backbone, 5)``, ``opt.step()``, ``zero_grad``,
``lr_scheduler.step()`` (polynomial warmup). facezoo runs its real training loop (``Trainer._train_loop``: the
DataLoader over its sample plan, device augmentation, the rank agreement on non-finite values, its loss scale and
schedule). Rounds alternate A B A B ...; each round's samples/s ratio (facezoo / reference) is reported and the
median is the result (target on CPU: >= 1.0).

    python benchmarks/bench_train.py                        # CPU: iresnet50_gwp, batch 16, 3 steps a round, 5 rounds
    python benchmarks/bench_train.py --device cuda --model iresnet50_gwp --batch 512 --precision bf16 \\
        --classes 2000000 --sample-rate 0.2 --rec /data/webface4m     # GPU: data from a .rec, the real loader

``--target IMG_S`` also prints facezoo's images/s against that target (the GPU goal: 8,000 img/s for iresnet50_gwp,
Partial FC 0.2 over 2M classes, bf16, on one H200; ``benchmarks/gpu_check.sh`` runs it), and on CUDA both sides' peak
memory is reported. ``--model-args`` passes extra ``timm.create_model`` arguments to both (tiny models for a CPU
smoke run).

``--quickstart`` instead times the README's main command (``facezoo train recipes/quickstart.yaml``) as a user runs
it, in a fresh process, and splits its wall time by the timestamps of its ``train.log``: start-up and rendering,
set-up, training, final checkpoint and evaluation, export (target: at most 300 s in all on a 2-core CPU).

With ``--rec`` facezoo reads the batches from that RecordIO through ``RecordIOFaces`` + ``collate_faces`` with
``--workers`` processes (the reference then reads the same files through a torch DataLoader with the same workers
and host-side transforms, as insightface's ``MXFaceDataset``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

import facezoo  # noqa: F401
from facezoo.losses import CombinedMarginLoss, PartialFC
from facezoo.train import Trainer, load_recipe


def recipe(args: argparse.Namespace, steps: int, data: str) -> Any:
    return load_recipe(
        None,
        [
            f"model.name={args.model}",
            f"model.args={json.dumps(args.model_args)}",
            f"data.train={data}",
            f"data.batch_size={args.batch}",
            f"data.num_workers={args.workers}",
            f"data.num_classes={args.classes}",
            f"data.synthetic.identities={args.identities}",
            "data.synthetic.images_per_identity=4",
            "data.augment.flip=0.5",
            "loss.name=combined",
            "loss.s=64",
            "loss.args={m1: 1.0, m2: 0.0, m3: 0.4}",
            f"loss.sample_rate={args.sample_rate}",
            "optim.name=sgd",
            "optim.lr=0.1",
            "optim.clip_grad_norm=5",
            "schedule.name=polynomial",
            f"train.max_steps={steps}",
            f"train.mixed_precision={args.precision}",
            "train.checkpoint_every=0",
            "train.tensorboard=false",
            f"train.log_every={max(steps, 1)}",
            "export.enabled=false",
            f"model.channels_last={str(args.device != 'cpu').lower()}",
        ],
    )


class Reference:
    """insightface train_v2's loop around the same modules."""

    def __init__(self, trainer: Trainer, args: argparse.Namespace) -> None:
        import timm

        self.args, self.device = args, trainer.device
        self.backbone = timm.create_model(args.model, num_classes=0, **args.model_args).to(self.device)
        if args.device != "cpu":
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.backbone.load_state_dict(trainer.backbone.state_dict())
        self.pfc = PartialFC(
            CombinedMarginLoss(64.0, 1.0, 0.0, 0.4), self.backbone.embed_dim, args.classes, args.sample_rate
        ).to(self.device)
        self.opt = torch.optim.SGD(
            [{"params": self.backbone.parameters()}, {"params": self.pfc.parameters()}],
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
        )
        total = 10**6
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1 - s / total)
        self.scaler = torch.amp.GradScaler(self.device.type, growth_interval=100, enabled=args.precision == "fp16")
        self.batches = self._loader(trainer) if args.rec else self._memory(trainer)

    def _memory(self, trainer: Trainer):
        """Random batches of the in-memory images, normalized and flipped on the host (its transforms)."""
        images, labels, g = trainer.source.images, trainer.source.labels, torch.Generator().manual_seed(0)
        while True:
            idx = torch.randint(0, len(labels), (self.args.batch,), generator=g)
            img = (images[idx].float() / 255 - 0.5) / 0.5
            flip = torch.rand(self.args.batch, generator=g) < 0.5
            yield torch.where(flip.view(-1, 1, 1, 1), img.flip(-1), img), labels[idx]

    def _loader(self, trainer: Trainer):
        """insightface's MXFaceDataset pattern: per-item decode + transforms in the workers, default collate."""
        from torch.utils.data import DataLoader

        from facezoo.data import RecordIOFaces, create_face_transform

        ds = RecordIOFaces(self.args.rec, transform=create_face_transform(self.backbone, is_training=True))
        workers = self.args.workers
        loader = DataLoader(
            ds,
            batch_size=self.args.batch,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        while True:
            yield from loader

    def steps(self, n: int) -> None:
        a = self.args
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
        for _ in range(n):
            img, labels = next(self.batches)
            img, labels = img.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if a.device != "cpu":
                img = img.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                emb = self.backbone(img)
            loss = self.pfc(emb.float(), labels)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), 5)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad()
            self.sched.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measured(device: torch.device, fn) -> Tuple[float, float]:
    """Run ``fn``: its seconds and the peak CUDA memory allocated meanwhile, in GiB (0 off CUDA)."""
    if device.type != "cuda":
        return timed(fn), 0.0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(fn)
    torch.cuda.synchronize(device)
    return seconds, torch.cuda.max_memory_allocated(device) / 2**30


def model_args(text: str) -> Dict[str, Any]:
    """``--model-args``: a YAML / JSON mapping of timm.create_model keyword arguments."""
    import yaml

    value = yaml.safe_load(text) if text else {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{widths: [8, 16, 16, 32]}}', got {text!r}")
    return value


QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
EVAL_LINE = "facezoo.train.engine: eval at step "
#: the phases of a quickstart run: (name, the train.log message that ends it)
PHASES = (
    ("start-up + render training faces", "facezoo.train.data: rendered "),
    ("set-up (model, held-out pairs)", "facezoo.train.engine: training "),
    ("training", "facezoo.train.engine: step "),  # the last step line
    ("final checkpoint + evaluation", EVAL_LINE),
    ("export", "facezoo.train.engine: done: "),
)


def _log_time(line: str) -> float:
    """The epoch time of a ``train.log`` line (``2026-12-02 04:38:01,671 INFO ...``)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def quickstart_split(overrides: List[str]) -> Tuple[Dict[str, float], str]:
    """Run the quickstart recipe as the README does, in a fresh process: seconds per phase and in all, and the
    final evaluation's log line."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "facezoo", "train", str(QUICKSTART), "--output-dir", tmp, "--quiet", *overrides]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        total = time.time() - start
        if done.returncode:
            raise SystemExit(f"the quickstart failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        lines = (Path(tmp) / "train.log").read_text().splitlines()
    split: Dict[str, float] = {}
    last = start
    for name, marker in PHASES:
        hits = [line for line in lines if marker in line]
        if not hits:
            raise SystemExit(f"train.log has no line with {marker!r}: did the recipe change?")
        t = _log_time(hits[-1])
        split[name], last = t - last, t
    split["process exit"] = start + total - last
    split["total"] = total
    final_eval = [line for line in lines if EVAL_LINE in line][-1]
    return split, final_eval.split("engine: ")[-1]


def main_quickstart(overrides: List[str], as_json: str = "") -> None:
    split, result = quickstart_split(overrides)
    if as_json:
        doc = {"quickstart": split, "result": result, "overrides": overrides}
        Path(as_json).write_text(json.dumps(doc, indent=1))
    target = 300.0
    print(f"quickstart: facezoo train {QUICKSTART.relative_to(QUICKSTART.parents[1])} {' '.join(overrides)}")
    for name, seconds in split.items():
        print(f"  {name:<34} {seconds:7.1f} s")
    print(f"  {result}")
    print(f"target <= {target:.0f} s: ratio total / target {split['total'] / target:.3f} ({os.cpu_count()} CPUs)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="iresnet50_gwp")
    p.add_argument(
        "--model-args",
        type=model_args,
        default={},
        metavar="YAML",
        help="extra timm.create_model kwargs for both sides, e.g. '{layers: [1, 1, 1, 1], img_size: 32}'",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--identities", type=int, default=64, help="synthetic identities rendered for the data")
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rec", help="train from this .rec (folder) through the real loader instead of memory")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--target", type=float, default=0.0, metavar="IMG_S", help="print facezoo's images/s against this")
    p.add_argument("--output-dir", default="/tmp/facezoo_bench_train", help="the engine's run folder (scratch)")
    p.add_argument(
        "--quickstart",
        nargs="*",
        metavar="KEY=VALUE",
        help="time the quickstart recipe's phases instead (optionally with recipe overrides)",
    )
    args = p.parse_args()
    if args.quickstart is not None:
        return main_quickstart(args.quickstart, args.json or "")
    if args.threads:
        torch.set_num_threads(args.threads)
    total = (args.rounds + 1) * args.steps
    out = Path(args.output_dir)
    trainer = Trainer(recipe(args, total, args.rec or "synthetic"), out, progress=False)
    if args.device != "cpu" and trainer.device.type == "cpu":
        raise SystemExit(f"--device {args.device}: no accelerator here")
    ref = Reference(trainer, args)
    # warm-up round of each, not counted
    trainer._train_loop(args.steps, checkpoint_at_end=False)
    ref.steps(args.steps)
    rows: List[Dict[str, float]] = []
    peak = {"facezoo": 0.0, "reference": 0.0}
    for r in range(args.rounds):
        end = trainer.step + args.steps
        t_fz, mem_fz = measured(trainer.device, lambda end=end: trainer._train_loop(end, checkpoint_at_end=False))
        t_ref, mem_ref = measured(trainer.device, lambda: ref.steps(args.steps))
        peak = {"facezoo": max(peak["facezoo"], mem_fz), "reference": max(peak["reference"], mem_ref)}
        n = args.steps * args.batch
        rows.append({"facezoo": n / t_fz, "reference": n / t_ref, "ratio": (n / t_fz) / (n / t_ref)})
        print(
            f"round {r + 1}: facezoo {n / t_fz:8.2f} samples/s   reference {n / t_ref:8.2f} samples/s   "
            f"ratio {rows[-1]['ratio']:.3f}",
            flush=True,
        )
    med = {k: statistics.median(row[k] for row in rows) for k in ("facezoo", "reference", "ratio")}
    print(
        f"median: facezoo {med['facezoo']:.2f} samples/s, reference {med['reference']:.2f} samples/s, "
        f"ratio {med['ratio']:.3f} (target >= 1.0)  [{args.model}, batch {args.batch}, {args.precision}, "
        f"{args.classes} classes, sample rate {args.sample_rate}, device {trainer.device}, "
        f"{torch.get_num_threads()} threads]"
    )
    if trainer.device.type == "cuda":
        print(f"peak memory: facezoo {peak['facezoo']:.2f} GiB, reference {peak['reference']:.2f} GiB")
    if args.target:
        print(
            f"target: facezoo {med['facezoo']:.0f} img/s of {args.target:.0f} img/s "
            f"(ratio {med['facezoo'] / args.target:.3f}) on {device_name(trainer.device)}"
        )
    if args.json:
        doc = {"args": vars(args), "rounds": rows, "median": med, "peak_memory_gib": peak, "target": args.target}
        Path(args.json).write_text(json.dumps(doc, indent=1))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
