"""CombinedMarginLoss / ArcFace / CosFace against insightface's code and straightforward formulas."""

from __future__ import annotations

import math

import pytest
import torch

from facezoo.losses import ArcFace, CombinedMarginLoss, CosFace, create_margin_loss


# ---------------------------------------------------------------- references (copied from insightface)
class InsightfaceCombinedMarginLoss(torch.nn.Module):
    """arcface_torch/losses.py CombinedMarginLoss (interclass filtering included), verbatim logic."""

    def __init__(self, s, m1, m2, m3, interclass_filtering_threshold=0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold

    def forward(self, logits, labels):
        index_positive = torch.where(labels != -1)[0]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = logits > self.interclass_filtering_threshold
                dirty = dirty.float()
                mask = torch.ones([index_positive.size(0), logits.size(1)], device=logits.device)
                mask.scatter_(1, labels[index_positive].view(-1, 1), 0)
                dirty[index_positive] *= mask
                tensor_mul = 1 - dirty
            logits = tensor_mul * logits
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        if self.m1 == 1.0 and self.m3 == 0.0:
            with torch.no_grad():
                target_logit.arccos_()
                logits.arccos_()
                final_target_logit = target_logit + self.m2
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits.cos_()
            logits = logits * self.s
        elif self.m3 > 0:
            final_target_logit = target_logit - self.m3
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits = logits * self.s
        else:
            raise
        return logits


def insightface_old_arcface(logits, labels, s=64.0, m=0.5, easy_margin=False):
    """Older arcface_torch ArcFace (sqrt formula, threshold fallback), autograd gradient."""
    cos_m, sin_m = math.cos(m), math.sin(m)
    theta, sinmm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    index = torch.where(labels != -1)[0]
    target_logit = logits[index, labels[index].view(-1)]
    sin_theta = torch.sqrt(1.0 - torch.pow(target_logit, 2))
    cos_theta_m = target_logit * cos_m - sin_theta * sin_m
    if easy_margin:
        final = torch.where(target_logit > 0, cos_theta_m, target_logit)
    else:
        final = torch.where(target_logit > theta, cos_theta_m, target_logit - sinmm)
    logits = logits.clone()
    logits[index, labels[index].view(-1)] = final
    return logits * s


def make_batch(n=12, c=30, seed=0, dtype=torch.float32, negatives=(3, 7)):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, c, generator=g, dtype=torch.float64).mul(1.96).sub(0.98).to(dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    for i in negatives:
        labels[i] = -1
    return cos, labels


def run(head, cos, labels, upstream=None):
    x = cos.clone().requires_grad_(True)
    out = head(x, labels)
    if upstream is not None:
        g = upstream
    else:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * g).sum().backward()
    return out.detach(), x.grad, g


def run_insightface(ref, cos, labels, g):
    x = cos.clone().requires_grad_(True)
    out = ref(x.clamp(-1, 1), labels)  # insightface clamps before the head; its head works in place
    (out * g).sum().backward()
    return out.detach(), x.grad


# ---------------------------------------------------------------- parity with insightface
@pytest.mark.parametrize("m", [0.5, 0.4, 0.0])
def test_arcface_matches_insightface_forward_and_straight_through_gradient(m):
    cos, labels = make_batch()
    out, grad, g = run(ArcFace(s=64.0, m=m), cos, labels)
    ref_out, ref_grad = run_insightface(InsightfaceCombinedMarginLoss(64.0, 1.0, m, 0.0), cos, labels, g)
    pos = torch.where(labels != -1)[0]
    if m > 0:  # targets are computed with exactly insightface's operations (m = 0 skips its arccos/cos round trip)
        assert torch.equal(out[pos, labels[pos]], ref_out[pos, labels[pos]])
    # elsewhere insightface round-trips cos(arccos(x)); facezoo keeps x (a few ulp apart)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=64 * 2e-6)
    # straight-through: d out / d cos = s, exactly as insightface's in-place no-grad update
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    torch.testing.assert_close(grad, 64.0 * g, rtol=0, atol=0)


def test_cosface_matches_insightface_exactly():
    cos, labels = make_batch()
    out, grad, g = run(CosFace(s=64.0, m=0.4), cos, labels)
    ref_out, ref_grad = run_insightface(InsightfaceCombinedMarginLoss(64.0, 1.0, 0.0, 0.4), cos, labels, g)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_interclass_filtering_matches_insightface():
    cos, labels = make_batch(seed=3)
    head = CombinedMarginLoss(64.0, 1.0, 0.0, 0.4, interclass_filtering_threshold=0.5)
    out, grad, g = run(head, cos, labels)
    ref_out, ref_grad = run_insightface(
        InsightfaceCombinedMarginLoss(64.0, 1.0, 0.0, 0.4, interclass_filtering_threshold=0.5), cos, labels, g
    )
    assert (cos > 0.5).any()
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_threshold_overflow_matches_old_insightface_arcface():
    cos, labels = make_batch(seed=5)
    cos[0, labels[0]] = -0.97  # theta > pi - m: fallback branch
    head = ArcFace(s=64.0, m=0.5, straight_through=False, overflow="threshold")
    out, grad, g = run(head, cos, labels)
    x = cos.clone().requires_grad_(True)
    ref = insightface_old_arcface(x, labels, 64.0, 0.5)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=64 * 3e-6)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-3)
    assert out[0, labels[0]].item() == pytest.approx(64 * (-0.97 - 0.5 * math.sin(0.5)), abs=1e-4)


def test_easy_margin_matches_old_insightface_arcface():
    cos, labels = make_batch(seed=6)
    head = ArcFace(s=64.0, m=0.5, straight_through=False, overflow="easy")
    out, grad, g = run(head, cos, labels)
    x = cos.clone().requires_grad_(True)
    ref = insightface_old_arcface(x, labels, 64.0, 0.5, easy_margin=True)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=64 * 3e-6)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- formulas
@pytest.mark.parametrize(
    "m1,m2,m3", [(1.0, 0.5, 0.0), (1.0, 0.3, 0.2), (1.35, 0.0, 0.0), (1.2, 0.25, 0.15), (1.0, 0.0, 0.35)]
)
def test_combined_margin_formula_and_exact_gradient(m1, m2, m3):
    cos, labels = make_batch(dtype=torch.float64, seed=7)
    s = 30.0
    head = CombinedMarginLoss(s, m1, m2, m3, straight_through=False)
    out, grad, g = run(head, cos, labels)
    x = cos.clone().requires_grad_(True)
    pos = torch.where(labels != -1)[0]
    ref = x * s
    target = (torch.cos(m1 * torch.arccos(x[pos, labels[pos]]) + m2) - m3) * s
    ref = ref.index_put((pos, labels[pos]), target)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-9)
    # straight-through variant: same forward, identity gradient
    out_st, grad_st, _ = run(CombinedMarginLoss(s, m1, m2, m3), cos, labels, g)
    torch.testing.assert_close(out_st, out, rtol=0, atol=0)
    torch.testing.assert_close(grad_st, s * g, rtol=0, atol=0)


def test_rows_with_label_minus_one_are_only_scaled():
    cos, labels = make_batch(seed=8)
    neg = torch.where(labels == -1)[0]
    for head in [ArcFace(), CosFace(), CombinedMarginLoss(64, 1.2, 0.2, 0.1), ArcFace(overflow="threshold")]:
        out, grad, g = run(head, cos, labels)
        assert torch.equal(out[neg], cos[neg] * 64.0), head
        assert torch.equal(grad[neg], g[neg] * 64.0), head


def test_theta_plus_margin_beyond_pi_wraps_and_stays_finite():
    # cos(theta) = -1 .. -0.9: theta + 0.5 > pi
    cos = torch.tensor([[-1.0, 0.2], [-0.999, 0.1], [-0.95, 0.3], [1.0, 0.0], [0.9999999, -1.0]])
    labels = torch.tensor([0, 0, 0, 0, 0])
    for st in (True, False):
        out, grad, _ = run(ArcFace(m=0.5, straight_through=st), cos, labels, torch.ones(5, 2))
        expected = torch.cos(torch.arccos(cos[:, 0].double()) + 0.5) * 64
        torch.testing.assert_close(out[:, 0].double(), expected, rtol=0, atol=1e-4)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # the wrapped target rises with theta past pi - m: exact gradient changes sign there
    _, grad, _ = run(ArcFace(m=0.5, straight_through=False), cos, labels, torch.ones(5, 2))
    assert grad[2, 0] < 0 and grad[3, 0] > 0
    # bounded at cos = +-1 (sin(theta) floored at 0.01)
    assert grad.abs().max() <= 64 / 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_float32(dtype):
    cos, labels = make_batch(dtype=dtype, seed=9)
    cos[0, :] = 1.0
    cos[1, :] = -1.0
    labels[0], labels[1] = 2, 4
    # slightly out of range, as half-precision dot products of unit vectors can be
    cos[2, labels[2]] = torch.tensor(1.001, dtype=dtype)
    for head in [
        ArcFace(),
        ArcFace(straight_through=False),
        CosFace(),
        CombinedMarginLoss(64, 1.5, 0.3, 0.2, straight_through=False),
    ]:
        out, grad, _ = run(head, cos, labels)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), head
        assert grad.dtype == dtype


def test_invalid_settings_are_refused_clearly():
    with pytest.raises(ValueError, match="m1 == 1"):
        CombinedMarginLoss(64, 1.2, 0.3, 0.0, overflow="threshold")
    with pytest.raises(ValueError, match="overflow"):
        ArcFace(overflow="clip")
    with pytest.raises(ValueError, match="scale"):
        ArcFace(s=0)
    with pytest.raises(ValueError, match=r"\[0, pi\)"):
        ArcFace(m=4.0)
    with pytest.raises(ValueError, match="m3"):
        CosFace(m=-0.1)
    head = ArcFace()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\]"):
        head(torch.zeros(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="labels must have shape"):
        head(torch.zeros(2, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        head(torch.zeros(5), torch.tensor([0]))


def test_factory_builds_every_head_and_rejects_unknown():
    assert isinstance(create_margin_loss("ArcFace", m=0.4), ArcFace)
    assert create_margin_loss("arcface", m=0.4).m2 == 0.4
    assert create_margin_loss("combined", s=64, m1=1.0, m2=0.0, m3=0.4).m3 == 0.4
    for name in ["cosface", "adaface", "curricular_face", "magface"]:
        assert isinstance(create_margin_loss(name), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown margin loss"):
        create_margin_loss("sphereface2")
    with pytest.raises(TypeError, match="arcface"):
        create_margin_loss("arcface", margin=0.5)
