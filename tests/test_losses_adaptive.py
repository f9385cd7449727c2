"""AdaFace, CurricularFace and MagFace against the authors' code (adapted to take cosine logits) and formulas."""

from __future__ import annotations

import io
import math

import pytest
import torch

from facezoo.losses import AdaFace, CurricularFace, MagFace


# ---------------------------------------------------------------- references (authors' code, kernel removed)
class ReferenceAdaFace(torch.nn.Module):
    """mk-minchul/AdaFace head.py AdaFace.forward, with the cosine given instead of embeddings @ kernel."""

    def __init__(self, m=0.4, h=0.333, s=64.0, t_alpha=0.01):
        super().__init__()
        self.m, self.eps, self.h, self.s, self.t_alpha = m, 1e-3, h, s, t_alpha
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.ones(1) * (20))
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def forward(self, cosine, norms, label):
        cosine = cosine.clamp(-1 + self.eps, 1 - self.eps)
        safe_norms = torch.clip(norms, min=0.001, max=100)
        safe_norms = safe_norms.clone().detach()
        with torch.no_grad():
            mean = safe_norms.mean().detach()
            std = safe_norms.std().detach()
            self.batch_mean = mean * self.t_alpha + (1 - self.t_alpha) * self.batch_mean
            self.batch_std = std * self.t_alpha + (1 - self.t_alpha) * self.batch_std
        margin_scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps)
        margin_scaler = margin_scaler * self.h
        margin_scaler = torch.clip(margin_scaler, -1, 1)
        m_arc = torch.zeros(label.size()[0], cosine.size()[1], device=cosine.device)
        m_arc.scatter_(1, label.reshape(-1, 1), 1.0)
        g_angular = self.m * margin_scaler * -1
        m_arc = m_arc * g_angular
        theta = cosine.acos()
        theta_m = torch.clip(theta + m_arc, min=self.eps, max=math.pi - self.eps)
        cosine = theta_m.cos()
        m_cos = torch.zeros(label.size()[0], cosine.size()[1], device=cosine.device)
        m_cos.scatter_(1, label.reshape(-1, 1), 1.0)
        g_add = self.m + (self.m * margin_scaler)
        m_cos = m_cos * g_add
        cosine = cosine - m_cos
        return cosine * self.s


def reference_curricularface(cos_theta, label, t, m=0.5, s=64.0):
    """HuangYG123/CurricularFace head/metrics.py forward (kernel removed); returns (logits, new t)."""
    cos_m, sin_m = math.cos(m), math.sin(m)
    threshold, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    cos_theta = cos_theta.clamp(-1, 1)
    target_logit = cos_theta[torch.arange(0, cos_theta.size(0)), label].view(-1, 1)
    sin_theta = torch.sqrt(1.0 - torch.pow(target_logit, 2))
    cos_theta_m = target_logit * cos_m - sin_theta * sin_m
    mask = cos_theta > cos_theta_m
    final_target_logit = torch.where(target_logit > threshold, cos_theta_m, target_logit - mm)
    hard_example = cos_theta[mask]
    with torch.no_grad():
        t = target_logit.mean() * 0.01 + (1 - 0.01) * t
    cos_theta = cos_theta.clone()
    cos_theta[mask] = hard_example * (t + hard_example)
    cos_theta.scatter_(1, label.view(-1, 1).long(), final_target_logit)
    return cos_theta * s, t


def reference_magface(cos_theta, label, x_norm, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, easy_margin=False):
    """IrvingMeng/MagFace MagLinear + MagLoss output (before cross-entropy), and loss_g."""
    x_norm = x_norm.view(-1, 1).clamp(l_a, u_a)
    ada_margin = (u_m - l_m) / (u_a - l_a) * (x_norm - l_a) + l_m
    cos_m, sin_m = torch.cos(ada_margin), torch.sin(ada_margin)
    cos_theta = cos_theta.clamp(-1, 1)
    sin_theta = torch.sqrt(1.0 - torch.pow(cos_theta, 2))
    cos_theta_m = cos_theta * cos_m - sin_theta * sin_m
    if easy_margin:
        cos_theta_m = torch.where(cos_theta > 0, cos_theta_m, cos_theta)
    else:
        mm = torch.sin(math.pi - ada_margin) * ada_margin
        threshold = torch.cos(math.pi - ada_margin)
        cos_theta_m = torch.where(cos_theta > threshold, cos_theta_m, cos_theta - mm)
    one_hot = torch.zeros_like(cos_theta)
    one_hot.scatter_(1, label.view(-1, 1), 1.0)
    output = one_hot * s * cos_theta_m + (1.0 - one_hot) * s * cos_theta
    loss_g = torch.mean(1 / (u_a**2) * x_norm + 1 / (x_norm))
    return output, loss_g


def batch(n=16, c=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, c, generator=g, dtype=torch.float64).mul(1.9).sub(0.95).to(dtype)
    labels = torch.randint(0, c, (n,), generator=g)
    norms = torch.rand(n, generator=g, dtype=torch.float64).mul(60).add(5).to(dtype)
    upstream = torch.randn(n, c, generator=g, dtype=dtype)
    return cos, labels, norms, upstream


# ---------------------------------------------------------------- AdaFace
def test_adaface_matches_reference_over_several_training_steps():
    head, ref = AdaFace(m=0.4, h=0.333, s=64.0, t_alpha=0.01), ReferenceAdaFace(0.4, 0.333, 64.0, 0.01)
    head.train()
    for step in range(4):
        cos, labels, norms, g = batch(seed=step)
        norms = norms * (1 + step)  # move the statistics
        x1 = cos.clone().requires_grad_(True)
        out = head(x1, labels, norms)
        (out * g).sum().backward()
        x2 = cos.clone().requires_grad_(True)
        ref_out = ref(x2, norms.view(-1, 1), labels)
        (ref_out * g).sum().backward()
        torch.testing.assert_close(out, ref_out, rtol=0, atol=64 * 2e-6)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(head.batch_mean, ref.batch_mean, rtol=1e-6, atol=0)
        torch.testing.assert_close(head.batch_std, ref.batch_std, rtol=1e-6, atol=0)
    # the statistics moved from their initial values as the reference's EMA
    assert not torch.allclose(head.batch_mean, torch.tensor([20.0]))


def test_adaface_formula_on_one_row():
    head = AdaFace(m=0.4, h=0.333, s=64.0, t_alpha=1.0)
    cos = torch.tensor([[0.3, 0.1], [0.5, -0.2], [0.7, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    norms = torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64)
    out = head(cos, labels, norms)
    mean, std = norms.mean(), norms.std()
    z = torch.clip(0.333 * (norms - mean) / (std + 1e-3), -1, 1)
    theta = torch.arccos(cos[:, 0])
    expected = (torch.cos(torch.clip(theta - 0.4 * z, 1e-3, math.pi - 1e-3)) - (0.4 + 0.4 * z)) * 64
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(out[:, 1], cos[:, 1] * 64)


def test_adaface_statistics_update_only_in_training_and_live_in_state_dict():
    head = AdaFace()
    cos, labels, norms, _ = batch()
    head.eval()
    head(cos, labels, norms)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    head.train()
    head(cos, labels, norms)
    assert head.batch_mean.item() == pytest.approx(0.01 * norms.mean().item() + 0.99 * 20, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(0.01 * norms.std().item() + 0.99 * 100, rel=1e-6)
    sd = head.state_dict()
    assert set(sd) == {"batch_mean", "batch_std"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = AdaFace().eval()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    head.eval()
    torch.testing.assert_close(fresh(cos, labels, norms), head(cos, labels, norms))


def test_adaface_norm_shapes_labels_minus_one_and_missing_norms():
    cos, labels, norms, _ = batch()
    labels[:3] = -1
    a, b = AdaFace().eval(), AdaFace().eval()
    out = a(cos, labels, norms)
    torch.testing.assert_close(out, b(cos, labels, norms.view(-1, 1)))
    torch.testing.assert_close(out[:3], cos[:3].clamp(-1 + 1e-3, 1 - 1e-3) * 64)
    with pytest.raises(ValueError, match="norms"):
        a(cos, labels)
    with pytest.raises(ValueError, match="norms must have shape"):
        a(cos, labels, norms[:-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_adaface_edge_cases_stay_finite(dtype):
    head = AdaFace().train()
    cos = torch.tensor([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.0]], dtype=dtype)
    labels = torch.tensor([0, 0])
    for norms in (torch.zeros(2, dtype=dtype), torch.tensor([1e4, 0.0], dtype=dtype)):
        x = cos.clone().requires_grad_(True)
        out = head(x, labels, norms)
        out.sum().backward()
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # a batch of one: the unbiased std is undefined; the statistics stay finite
    head(cos[:1], labels[:1], torch.tensor([30.0], dtype=dtype))
    assert torch.isfinite(head.batch_std).all() and torch.isfinite(head.batch_mean).all()


# ---------------------------------------------------------------- CurricularFace
def test_curricularface_matches_reference_over_several_steps():
    head = CurricularFace(s=64.0, m=0.5, straight_through=False).train()
    t = torch.zeros(1)
    for step in range(3):
        cos, labels, _, g = batch(seed=10 + step)
        cos[0, 5] = 0.99  # a hard negative for sure
        x1 = cos.clone().requires_grad_(True)
        out = head(x1, labels)
        (out * g).sum().backward()
        x2 = cos.clone().requires_grad_(True)
        ref, t = reference_curricularface(x2, labels, t)
        (ref * g).sum().backward()
        torch.testing.assert_close(head.t, t, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out, ref.detach(), rtol=0, atol=64 * 3e-6)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-3)


def test_curricularface_sharded_columns_equal_unsharded():
    cos, labels, _, _ = batch(seed=20)
    full = CurricularFace().train()
    out = full(cos, labels)
    tc = cos[torch.arange(cos.shape[0]), labels]
    pieces = []
    for lo, hi in [(0, 25), (25, 40)]:
        shard = CurricularFace().train()
        local = torch.where((labels >= lo) & (labels < hi), labels - lo, torch.full_like(labels, -1))
        pieces.append(shard(cos[:, lo:hi], local, target_cosine=tc, global_batch=True))
        torch.testing.assert_close(shard.t, full.t)
    torch.testing.assert_close(torch.cat(pieces, 1), out)
    with pytest.raises(ValueError, match="target_cosine"):
        CurricularFace()(cos[:, :25], torch.where(labels < 25, labels, -1))


def test_curricularface_updates_t_only_in_training():
    cos, labels, _, _ = batch()
    head = CurricularFace().eval()
    head(cos, labels)
    assert head.t.item() == 0.0
    head.train()
    head(cos, labels)
    assert head.t.item() == pytest.approx(0.01 * cos[torch.arange(16), labels].mean().item(), rel=1e-5)
    assert "t" in head.state_dict()


# ---------------------------------------------------------------- MagFace
@pytest.mark.parametrize("easy_margin", [False, True])
def test_magface_matches_reference_including_norm_gradients(easy_margin):
    cos, labels, norms, g = batch(seed=30, dtype=torch.float64)
    norms[0], norms[1] = 5.0, 150.0  # outside [l_a, u_a]: clamped
    cos[2, labels[2]] = -0.99  # threshold fallback
    head = MagFace(straight_through=False, overflow="easy" if easy_margin else "threshold")
    x1, n1 = cos.clone().requires_grad_(True), norms.clone().requires_grad_(True)
    out = head(x1, labels, n1)
    ((out * g).sum() + head.regularizer(n1)).backward()
    x2, n2 = cos.clone().requires_grad_(True), norms.clone().requires_grad_(True)
    ref, loss_g = reference_magface(x2, labels, n2, easy_margin=easy_margin)
    ((ref * g).sum() + 35.0 * loss_g).backward()
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(head.regularizer(norms), 35.0 * loss_g.detach())
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(n1.grad, n2.grad, rtol=1e-8, atol=1e-10)
    assert n1.grad[0] == 0 and n1.grad[1] == 0 and n1.grad[3] != 0


def test_magface_margin_is_linear_in_the_norm():
    head = MagFace()
    a = torch.tensor([10.0, 60.0, 110.0])
    torch.testing.assert_close(head.margin(a), torch.tensor([0.45, 0.625, 0.8]))
    with pytest.raises(ValueError, match="l_a < u_a"):
        MagFace(l_a=50, u_a=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_curricular_and_magface_stay_finite_at_the_edges(dtype):
    cos = torch.tensor([[1.0, -1.0, 0.999], [-1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=dtype)
    labels = torch.tensor([0, 0, 2])
    norms = torch.tensor([0.0, 1e3, 20.0], dtype=dtype)
    for head in (
        CurricularFace().train(),
        CurricularFace(straight_through=False).train(),
        MagFace(),
        MagFace(straight_through=False),
    ):
        x, n = cos.clone().requires_grad_(True), norms.clone().requires_grad_(True)
        out = head(x, labels, n)
        loss = out.sum() + (head.regularizer(n) if head.regularizer(n) is not None else 0)
        loss.backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all(), head
        assert n.grad is None or torch.isfinite(n.grad).all()
