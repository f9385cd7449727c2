"""Partial FC in one process: equals head + cross-entropy, sampling, precision, checkpoints and re-sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from facezoo.losses import (
    AdaFace,
    ArcFace,
    CombinedMarginLoss,
    CosFace,
    CurricularFace,
    MagFace,
    PartialFC,
    gather_shards,
    load_shard_file,
    reshard,
    reshard_files,
    shard_range,
)

E, C = 16, 23


def data(n=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(n, E, generator=g) * 8).to(dtype)
    labels = torch.randint(0, C, (n,), generator=g)
    return emb, labels


def heads():
    return {
        "arcface": lambda: ArcFace(m=0.5),
        "arcface_exact": lambda: ArcFace(m=0.5, straight_through=False),
        "cosface": lambda: CosFace(),
        "combined": lambda: CombinedMarginLoss(64, 1.1, 0.3, 0.2, straight_through=False),
        "adaface": lambda: AdaFace(),
        "curricularface": lambda: CurricularFace(),
        "magface": lambda: MagFace(),
    }


def reference_loss(head, emb, labels, weight):
    """Plain full FC: normalized cosine, the head, cross-entropy (+ MagFace's regulariser)."""
    norms = emb.norm(dim=1)
    cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1, 1)
    loss = F.cross_entropy(head(cos, labels, norms), labels)
    reg = head.regularizer(norms)
    return loss + reg if reg is not None else loss


@pytest.mark.parametrize("name", list(heads()))
def test_one_process_equals_head_plus_cross_entropy(name):
    emb, labels = data()
    torch.manual_seed(0)
    pfc = PartialFC(heads()[name](), E, C)
    assert (pfc.rank, pfc.world_size, pfc.class_start, pfc.num_local) == (0, 1, 0, C)
    w = pfc.weight.detach().clone().requires_grad_(True)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    loss = pfc(e1, labels)
    loss.backward()
    ref = reference_loss(heads()[name](), e2, labels, w)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    # gradients reach ~1e2 (centers of norm ~0.04); allow float32 rounding relative to that
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6 * e2.grad.abs().max().item())
    torch.testing.assert_close(pfc.weight.grad, w.grad, rtol=1e-4, atol=1e-6 * w.grad.abs().max().item())


def test_loss_does_not_underflow_like_a_probability_clamp():
    # a row whose target logit is 128 below the others: insightface caps the loss at -log(1e-30) = 69
    pfc = PartialFC(ArcFace(s=64.0, m=0.0), 2, 2)
    with torch.no_grad():
        pfc.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    loss = pfc(torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(128.0, abs=1e-3)


def test_sampling_keeps_every_positive_and_equals_the_subset_loss():
    emb, labels = data(n=10, seed=1)
    pfc = PartialFC(ArcFace(), E, 200, sample_rate=0.1)
    labels = torch.tensor([3, 3, 150, 199, 0, 77, 77, 12, 150, 5])
    e = emb.clone().requires_grad_(True)
    torch.manual_seed(5)
    loss = pfc(e, labels)
    loss.backward()
    index = pfc.weight_index
    assert index.numel() == pfc.num_sample == 20
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index, index.sort()[0])
    # the same loss as a full FC restricted to the sampled classes, with remapped labels
    sub = pfc.weight.detach()[index].clone().requires_grad_(True)
    remapped = torch.searchsorted(index, labels)
    e2 = emb.clone().requires_grad_(True)
    ref = reference_loss(ArcFace(), e2, remapped, sub)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(e.grad, e2.grad)
    # only sampled centers get a gradient
    touched = pfc.weight.grad.abs().sum(1) > 0
    assert set(torch.where(touched)[0].tolist()) <= set(index.tolist())
    torch.testing.assert_close(pfc.weight.grad[index], sub.grad)
    # negatives are random: another step samples others, positives still all in
    torch.manual_seed(6)
    pfc(emb, labels)
    assert not torch.equal(pfc.weight_index, index)
    assert set(labels.tolist()) <= set(pfc.weight_index.tolist())


def test_sampling_with_more_positives_than_the_budget_keeps_them_all():
    pfc = PartialFC(CosFace(), E, 50, sample_rate=0.1)  # budget 5
    emb, _ = data(n=12)
    labels = torch.arange(12) * 4
    loss = pfc(emb, labels)
    assert torch.equal(pfc.weight_index, labels)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_half_embeddings_compute_logits_in_float32(dtype):
    emb, labels = data()
    pfc = PartialFC(ArcFace(), E, C)
    ref = pfc(emb.to(dtype).float(), labels)
    half = emb.to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pfc(half, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    loss.backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("name", list(heads()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_zero_norm_embeddings_and_half_inputs_stay_finite(name, dtype):
    emb, labels = data(n=6)
    emb[0] = 0.0
    emb[1] = 1e-20
    pfc = PartialFC(heads()[name](), E, C, sample_rate=0.5)
    with torch.no_grad():  # a center equal to an embedding: cosine exactly 1
        pfc.weight[labels[2]] = emb[2]
        pfc.weight[labels[3]] = -emb[3]
    e = emb.to(dtype).requires_grad_(True)
    loss = pfc(e, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(e.grad).all() and torch.isfinite(pfc.weight.grad).all()


def test_bad_inputs_are_refused_clearly():
    pfc = PartialFC(ArcFace(), E, C)
    emb, labels = data()
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 22\]"):
        pfc(emb, labels + 100)
    with pytest.raises(ValueError, match=r"embeddings must be \[N, 16\]"):
        pfc(emb[:, :8], labels)
    with pytest.raises(ValueError, match="labels must be integer"):
        pfc(emb, labels.float())
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcFace(), E, C, sample_rate=0.0)
    with pytest.raises(ValueError, match="must be >= the world size"):
        shard_range(3, 4, 0)


# ---------------------------------------------------------------- checkpoints
def test_shard_ranges_follow_insightface():
    # 10 classes over 3 ranks: 4, 3, 3 starting at 0, 4, 7
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [shard_range(8, 2, r) for r in range(2)] == [(0, 4), (4, 4)]


def test_state_dict_carries_the_class_range_and_survives_safetensors(tmp_path):
    pfc = PartialFC(AdaFace(), E, C)
    sd = pfc.state_dict()
    assert sd["shard_spec"].tolist() == [C, 1, 0, 0, C]
    assert {"weight", "margin_loss.batch_mean", "margin_loss.batch_std"} <= set(sd)
    save_file(sd, str(tmp_path / "pfc.safetensors"))
    other = PartialFC(AdaFace(), E, C)
    other.load_state_dict(load_file(str(tmp_path / "pfc.safetensors")))
    assert torch.equal(other.weight, pfc.weight)
    # a shard of another layout is refused with a pointer to reshard
    two = reshard([sd], 2)
    with pytest.raises(RuntimeError, match=r"holds classes \[0, 12\) of 23 \(rank 0 of 2\).*reshard"):
        other.load_state_dict(two[0])
    # an insightface shard (weight only) loads
    other.load_state_dict({"weight": torch.ones(C, E)}, strict=False)
    assert torch.equal(other.weight, torch.ones(C, E))


def test_reshard_round_trip_2_3_1():
    full = torch.randn(C, E)
    one = PartialFC(ArcFace(), E, C)
    one.load_full_weight(full)
    two = reshard([one.state_dict()], 2)
    assert [sd["weight"].shape[0] for sd in two] == [12, 11]
    assert [sd["shard_spec"].tolist() for sd in two] == [[C, 2, 0, 0, 12], [C, 2, 1, 12, 11]]
    three = reshard(list(reversed(two)), 3)  # any order when shards carry their range
    assert [sd["weight"].shape[0] for sd in three] == [8, 8, 7]
    assert torch.equal(three[1]["weight"], full[8:16])
    back = reshard(three, 1)
    assert torch.equal(back[0]["weight"], full)
    restored = PartialFC(ArcFace(), E, C)
    restored.load_state_dict(back[0])
    assert torch.equal(restored.weight, full)
    assert torch.equal(gather_shards(three), full)
    assert torch.equal(restored.gather_weight(), full)


def test_gather_shards_refuses_gaps_and_accepts_insightface_shards_in_rank_order():
    full = torch.randn(C, E)
    three = reshard([{"weight": full}], 3)  # weight-only input: list order is rank order
    with pytest.raises(ValueError, match=r"classes \[8, 16\) are missing"):
        gather_shards([three[0], three[2]])
    with pytest.raises(ValueError, match="some shards carry"):
        gather_shards([three[0], {"weight": three[1]["weight"]}, three[2]])
    insightface = [{"weight": sd["weight"]} for sd in three]
    assert torch.equal(gather_shards(insightface), full)
    with pytest.raises(ValueError, match="rank order"):
        gather_shards([insightface[2], insightface[0], insightface[1]])
    with pytest.raises(KeyError, match="'fc.weight'"):
        gather_shards(three, prefix="fc.")


def test_reshard_files_from_insightface_checkpoints(tmp_path):
    full = torch.randn(C, E)
    paths = []
    for rank, sd in enumerate(reshard([{"weight": full}], 2)):
        path = tmp_path / f"checkpoint_gpu_{rank}.pt"
        torch.save({"epoch": 3, "state_dict_softmax_fc": {"weight": sd["weight"]}}, path)
        paths.append(path)
    written = reshard_files(paths, 3, tmp_path / "out", key="state_dict_softmax_fc")
    assert [p.name for p in written] == [f"partial_fc_rank{r}_of_3.safetensors" for r in range(3)]
    shards = [load_shard_file(p) for p in written]
    assert torch.equal(gather_shards(shards), full)
    with pytest.raises(KeyError, match="no key 'state_dict_fc'"):
        load_shard_file(paths[0], key="state_dict_fc")


def test_l2_normalize_matches_f_normalize_and_bounds_the_zero_norm_gradient():
    from facezoo.losses.partial_fc import l2_normalize

    x = torch.randn(5, 7, dtype=torch.float64)
    x[0] = 0.0
    x[1] *= 1e-6
    g = torch.randn(5, 7, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = l2_normalize(a), F.normalize(b)
    assert torch.equal(ya, yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(a.grad[2:], b.grad[2:])  # exact for norms >= 0.01
    assert b.grad[0].abs().max() > 1e11  # F.normalize: 1 / 1e-12
    assert a.grad[:2].abs().max() <= g.abs().max() * 2 / 1e-2


class InsightfaceArcFace(torch.nn.Module):
    """insightface CombinedMarginLoss, ArcFace branch (in place under no_grad on the logits it receives)."""

    def __init__(self, s=64.0, m2=0.5):
        super().__init__()
        self.s, self.m2 = s, m2

    def forward(self, logits, labels):
        index_positive = torch.where(labels != -1)[0]
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        with torch.no_grad():
            target_logit.arccos_()
            logits.arccos_()
            logits[index_positive, labels[index_positive].view(-1)] = target_logit + self.m2
            logits.cos_()
        return logits * self.s


def test_insightface_head_module_works_inside_partial_fc():
    emb, labels = data(seed=4)
    torch.manual_seed(0)
    ours = PartialFC(ArcFace(), E, C, compensate_ddp_average=False)
    theirs = PartialFC(InsightfaceArcFace(), E, C)
    theirs.load_state_dict(ours.state_dict())
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, l2 = ours(e1, labels), theirs(e2, labels)
    (l1 + l2).backward()
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6 * e2.grad.abs().max().item())
    torch.testing.assert_close(
        ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-6 * ours.weight.grad.abs().max().item()
    )
