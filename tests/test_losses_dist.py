"""Partial FC over 2 gloo processes equals one process on the same global batch.

The test starts this file twice as a script (ranks 0 and 1, unequal local batches 6 + 4), each saving its
losses, embedding gradients, center gradients and head buffers; the parent recomputes everything in one
process and compares.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

E, C, SIZES, STEPS = 8, 41, (6, 4), 2
REPO = Path(__file__).resolve().parents[1]


class PlainScale(torch.nn.Module):
    """A head that is not a facezoo MarginHead (like insightface's own modules)."""

    def forward(self, cosine, labels):
        return cosine * 30.0


def cases():
    from facezoo.losses import AdaFace, ArcFace, CombinedMarginLoss, CosFace, CurricularFace, MagFace

    return {
        "arcface": (lambda: ArcFace(m=0.5), {}),
        "arcface_exact": (lambda: ArcFace(m=0.5, straight_through=False), {}),
        "cosface": (lambda: CosFace(), {}),
        "combined": (lambda: CombinedMarginLoss(64, 1.1, 0.3, 0.2, straight_through=False), {}),
        "adaface": (lambda: AdaFace(), {}),
        "curricularface": (lambda: CurricularFace(), {}),
        "magface": (lambda: MagFace(), {}),
        "plain_module": (lambda: PlainScale(), {}),
        "arcface_ddp_scaled": (lambda: ArcFace(m=0.5), {"compensate_ddp_average": True}),
        "arcface_sampled": (lambda: ArcFace(m=0.5), {"sample_rate": 0.3}),
    }


def global_data():
    g = torch.Generator().manual_seed(1234)
    n = sum(SIZES)
    emb = [torch.randn(n, E, generator=g) * 10 for _ in range(STEPS)]
    labels = [torch.randint(0, C, (n,), generator=g) for _ in range(STEPS)]
    weight = torch.randn(C, E, generator=g) * 0.05
    return emb, labels, weight


def run_case(make_head, kwargs, rows, weight, emb, labels):
    """Train STEPS steps on ``rows`` of each batch; returns what the comparison needs."""
    from facezoo.losses import PartialFC

    kwargs = {"compensate_ddp_average": False, **kwargs}
    head = make_head().train()
    pfc = PartialFC(head, E, C, **kwargs)
    pfc.load_full_weight(weight)
    out = {"loss": [], "emb_grad": [], "weight_grad": [], "index": [], "class_start": pfc.class_start}
    for step in range(STEPS):
        e = emb[step][rows].clone().requires_grad_(True)
        loss = pfc(e, labels[step][rows])
        loss.backward()
        out["loss"].append(loss.detach())
        out["emb_grad"].append(e.grad)
        out["weight_grad"].append(pfc.weight.grad.clone())
        out["index"].append(None if pfc.weight_index is None else pfc.weight_index + pfc.class_start)
        pfc.weight.grad = None
    out["buffers"] = {k: v.clone() for k, v in head.state_dict().items()}
    return out


def worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from facezoo.losses import AdaFace, ArcFace, PartialFC

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    emb, labels, weight = global_data()
    start = sum(SIZES[:rank])
    rows = slice(start, start + SIZES[rank])
    results = {name: run_case(make, kw, rows, weight, emb, labels) for name, (make, kw) in cases().items()}
    pfc = PartialFC(ArcFace(), E, C)
    pfc.load_full_weight(weight)
    results["gathered_weight"] = pfc.gather_weight()
    # AdaFace used without Partial FC under data parallelism: statistics pooled over the ranks
    ada = AdaFace().train()
    norms = emb[0].norm(dim=1)
    cos = F.linear(F.normalize(emb[0]), F.normalize(weight))
    ada(cos[rows], labels[0][rows], norms[rows])
    results["adaface_ddp_stats"] = ada.state_dict()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def reference_loss(head, emb, labels, weight):
    norms = emb.norm(dim=1)
    cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1, 1)
    from facezoo.losses import MarginHead

    if isinstance(head, MarginHead):
        loss = F.cross_entropy(head(cos, labels, norms), labels)
        reg = head.regularizer(norms)
        return loss + reg if reg is not None else loss
    return F.cross_entropy(head(cos, labels), labels)


def close(a, b, what, scale=1.0):
    atol = 2e-5 * max(1.0, b.abs().max().item() * abs(scale))
    torch.testing.assert_close(a, b * scale, rtol=2e-5, atol=atol, msg=what)


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_two_gloo_processes_equal_one_process(tmp_path, free_port):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    port = free_port
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=150)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    from facezoo.losses import AdaFace, shard_range

    emb, labels, weight = global_data()
    starts = [0, SIZES[0]]
    for name, (make, kwargs) in cases().items():
        sampled = "sample_rate" in kwargs
        ddp_scale = 2.0 if kwargs.get("compensate_ddp_average") else 1.0
        head = make().train()
        w = weight.clone().requires_grad_(True)
        for step in range(STEPS):
            if sampled:  # one process over the union of the classes both ranks sampled, labels remapped
                union = torch.cat([ranks[r][name]["index"][step] for r in range(2)])
                assert set(labels[step].tolist()) <= set(union.tolist()), "a positive class was not sampled"
                sub = weight[union].clone().requires_grad_(True)
                e = emb[step].clone().requires_grad_(True)
                loss = reference_loss(head, e, torch.searchsorted(union, labels[step]), sub)
                loss.backward()
                wgrad = torch.zeros_like(weight).index_put((union,), sub.grad)
            else:
                e = emb[step].clone().requires_grad_(True)
                w.grad = None
                loss = reference_loss(head, e, labels[step], w)
                loss.backward()
                wgrad = w.grad
            for r in range(2):
                got = ranks[r][name]
                rows = slice(starts[r], starts[r] + SIZES[r])
                cstart, nloc = shard_range(C, 2, r)
                close(got["loss"][step], loss.detach(), f"{name} step {step} rank {r} loss")
                close(got["emb_grad"][step], e.grad[rows], f"{name} step {step} rank {r} embedding grad", ddp_scale)
                close(
                    got["weight_grad"][step], wgrad[cstart : cstart + nloc], f"{name} step {step} rank {r} center grad"
                )
        for r in range(2):
            for key, value in head.state_dict().items():
                close(ranks[r][name]["buffers"][key], value, f"{name} rank {r} buffer {key}")
    for r in range(2):
        assert torch.equal(ranks[r]["gathered_weight"], weight)
    # AdaFace's statistics pooled over ranks equal one process's on the global batch
    ada = AdaFace().train()
    cos = F.linear(F.normalize(emb[0]), F.normalize(weight))
    ada(cos, labels[0], emb[0].norm(dim=1))
    for r in range(2):
        for key, value in ada.state_dict().items():
            close(ranks[r]["adaface_ddp_stats"][key], value, f"adaface ddp rank {r} {key}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
