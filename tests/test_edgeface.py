"""EdgeFace (Idiap) as timm models: Idiap's published state_dicts load by tag from the Hub path, strictly.

The reference network is built here from what Idiap's ``otroshi/edgeface`` code does (``backbones/timmfr.py``,
``backbones/__init__.py``): ``timm.create_model('<edgenext trunk>')``, ``reset_classifier(512)``, kept as the
attribute ``model`` of a wrapper; the gamma variants then replace every ``nn.Linear`` child whose own name does not
contain 'head' by a two-layer low-rank module (``linear1`` no bias, ``linear2``), rank max(2, int(min(in, out) * r)).
Its state_dict is saved as the ``.pt`` file of the ``Idiap/EdgeFace-*`` Hub repository, in an offline HF cache.
"""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn as nn

import facezoo  # noqa: F401  (registers the models)
from facezoo.errors import CheckpointError
from facezoo.models.edgeface import VARIANTS
from facezoo.models.pretrained import pretrained_info

# name -> (EdgeNeXt trunk, gamma, Hub repo, MPARAMS in Idiap's README table)
IDIAP = {
    "edgeface_base": ("edgenext_base", None, "Idiap/EdgeFace-Base", 18.23),
    "edgeface_s_gamma_05": ("edgenext_small", 0.5, "Idiap/EdgeFace-S-GAMMA", 3.65),
    "edgeface_xs_gamma_06": ("edgenext_x_small", 0.6, "Idiap/EdgeFace-XS-GAMMA", 1.77),
    "edgeface_xxs": ("edgenext_xx_small", None, "Idiap/EdgeFace-XXS", 1.24),
}


class _LowRank(nn.Module):
    def __init__(self, fin: int, fout: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(fin, rank, bias=False)
        self.linear2 = nn.Linear(rank, fout, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def _low_rank_all(module: nn.Module, ratio: float) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and "head" not in name:
            rank = max(2, int(min(child.in_features, child.out_features) * ratio))
            setattr(module, name, _LowRank(child.in_features, child.out_features, rank, child.bias is not None))
        else:
            _low_rank_all(child, ratio)


class _Reference(nn.Module):
    """Idiap's wrapper as their code builds it: the timm trunk as ``model``, its classifier reset to 512."""

    def __init__(self, trunk: str) -> None:
        super().__init__()
        self.model = timm.create_model(trunk)
        self.model.reset_classifier(512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def reference(name: str, seed: int = 0) -> nn.Module:
    """Idiap's network for ``name`` with every parameter moved away from its init (layer scales are 1e-6 at init,
    which would hide wrongly placed block weights)."""
    trunk, ratio, _, _ = IDIAP[name]
    torch.manual_seed(seed)
    net = _Reference(trunk)
    if ratio is not None:
        _low_rank_all(net, ratio)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if pname.endswith("gamma") or pname.endswith("gamma_xca"):
                p.copy_(0.5 + 0.1 * torch.randn_like(p))
            else:
                p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 in this process, and no network connection possible."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was opened")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def _publish(hf_offline_cache, name: str, state_dict: dict) -> str:
    """Put ``state_dict`` as ``<name>.pt`` into the offline cache as Idiap's Hub repository; returns the cache dir."""
    env = hf_offline_cache(IDIAP[name][2], lambda snap: torch.save(state_dict, Path(snap) / f"{name}.pt"))
    return env["HF_HUB_CACHE"]


def test_four_models_and_tags_registered():
    assert sorted(timm.list_models("edgeface*")) == sorted(IDIAP)
    for name, (_, _, repo, _) in IDIAP.items():
        cfg = timm.get_pretrained_cfg(f"{name}.idiap")
        assert cfg.hf_hub_id == repo and cfg.hf_hub_filename == f"{name}.pt"
        assert cfg.license == "cc-by-nc-sa-4.0"
        assert cfg.input_size == (3, 112, 112) and cfg.mean == cfg.std == (0.5, 0.5, 0.5)
        assert cfg.crop_pct == 1.0 and cfg.num_classes == 0 and cfg.classifier == "classifier"
        assert name + ".idiap" in timm.list_pretrained("edgeface*")


@pytest.mark.parametrize("name", list(IDIAP))
def test_parameter_counts_match_reference_and_idiap_table(name):
    """Built on the meta device (cheap): same parameters as Idiap's network, and the MPARAMS of their README."""
    trunk, ratio, _, mparams = IDIAP[name]
    with torch.device("meta"):
        ref = _Reference(trunk)
        if ratio is not None:
            _low_rank_all(ref, ratio)
    model = timm.create_model(name, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    assert _count(model) == _count(ref)
    assert round(_count(model) / 1e6, 2) == mparams


@pytest.mark.parametrize("name", ["edgeface_xxs", "edgeface_xs_gamma_06"])
def test_idiap_checkpoint_loads_by_tag_from_hub_cache(name, hf_offline_cache, offline):
    ref = reference(name)
    cache = _publish(hf_offline_cache, name, ref.state_dict())
    model = timm.create_model(f"{name}.idiap", pretrained=True, cache_dir=cache).eval()
    assert _count(model) == _count(ref)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert got.shape == (2, 512)
    assert ((got - want).norm() / want.norm()).item() < 1e-4
    if name == "edgeface_xxs":  # the tag is the default: pretrained=True alone loads the same weights
        default = timm.create_model(name, pretrained=True, cache_dir=cache).eval()
        assert default.pretrained_cfg["tag"] == "idiap" and default.pretrained_cfg["license"] == "cc-by-nc-sa-4.0"
        with torch.no_grad():
            torch.testing.assert_close(default(x), got)
    if name == "edgeface_xxs":  # a new classifier on top: the embedding still loads (timm loads non-strictly)
        tuned = timm.create_model(f"{name}.idiap", pretrained=True, cache_dir=cache, num_classes=3).eval()
        with torch.no_grad():
            assert tuned(x).shape == (2, 3)
            torch.testing.assert_close(tuned.forward_head(tuned.forward_features(x), pre_logits=True), got)
    # the data config a user resolves from the model is the face convention
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 112, 112) and data_cfg["mean"] == (0.5, 0.5, 0.5)


def test_hub_file_is_loaded_with_weights_only(hf_offline_cache, offline):
    """A .pt that needs code to unpickle is refused (timm's hf-hub path uses torch.load(weights_only=True))."""
    state = dict(reference("edgeface_xxs").state_dict(), extra=_Unsafe())
    cache = _publish(hf_offline_cache, "edgeface_xxs", state)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        timm.create_model("edgeface_xxs.idiap", pretrained=True, cache_dir=cache)


class _Unsafe:
    """An object torch.load(weights_only=True) must refuse."""


def test_low_rank_checkpoint_into_full_rank_model_says_so(tmp_path):
    net = _Reference("edgenext_xx_small")
    _low_rank_all(net, 0.5)
    torch.save(net.state_dict(), tmp_path / "lowrank.pt")
    with pytest.raises(CheckpointError, match=r"low-rank \(LoRaLin\).*edgenext_xx_small with rank_ratio=None"):
        timm.create_model(
            "edgeface_xxs", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "lowrank.pt"))
        )


def test_face_facts():
    model = timm.create_model("edgeface_s_gamma_05", device="meta")
    assert model.family == "edgeface" and model.layout == "edgeface"
    assert model.pool_type == model.global_pool == "avg"
    assert model.embed_dim == 512 and model.stem_kernel == 0
    assert model.rank_ratio == 0.5 and model.trunk == "edgenext_small"
    assert model.pretrained_cfg["input_size"] == (3, 112, 112)


@pytest.mark.parametrize("name", list(IDIAP))
def test_pretrained_info_registered(name):
    info = pretrained_info(f"{name}.idiap")
    assert info is not None
    assert info.hub_id == IDIAP[name][2] and info.filename == f"{name}.pt"
    assert info.license == "cc-by-nc-sa-4.0" and "BSD-3" in info.license_note
    assert "WebFace" in info.dataset and info.reported["LFW"] > 99 and "otroshi/edgeface" in info.reported_by
    assert info.notes  # what could not be confirmed is stated


def test_timm_contract_basics():
    model = timm.create_model("edgeface_xxs", depths=(1, 1, 1, 1)).eval()  # xxs widths, one block per stage
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 168, 3, 3)
        emb = model.forward_head(feats, pre_logits=True)
        assert emb.shape == (2, 512)
        torch.testing.assert_close(model(x), emb)
        model.reset_classifier(10)
        assert model(x).shape == (2, 10) and model.get_classifier().out_features == 10
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), emb)  # embedding layer kept
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 168, 3, 3)
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), emb)
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [24, 48, 88, 168]
        torch.testing.assert_close(torch.jit.script(model)(x), emb)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "gwp")
    with pytest.raises(TypeError):
        timm.create_model("edgeface_xxs", not_an_arg=1, device="meta")
    assert len(timm.models.group_parameters(model, model.group_matcher())) > 1


def test_features_only():
    model = timm.create_model("edgeface_xxs", features_only=True, out_indices=(1, 3), depths=(1, 1, 1, 1)).eval()
    assert model.feature_info.channels() == [48, 168] and model.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 112, 112))
    assert [tuple(t.shape) for t in outs] == [(1, 48, 14, 14), (1, 168, 3, 3)]


def test_classifier_training_reaches_every_parameter():
    model = timm.create_model("edgeface_xs_gamma_06", num_classes=42, depths=(1, 1, 1, 1)).train()
    out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 42)
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.set_grad_checkpointing()
    model(torch.randn(2, 3, 112, 112)).mean().backward()


def test_edgeface_takes_part_in_the_zoo_plumbing(tmp_path):
    """EdgeFace is a family like the others: listed by `facezoo models`, named by describe_state_dict, exported to a
    folder timm reloads with identical embeddings and a card naming EdgeFace."""
    from facezoo.hub import save_pretrained
    from facezoo.models.checkpoints import describe_state_dict
    from facezoo.models.families import face_model_names

    assert face_model_names(["edgeface*"]) == list(VARIANTS)
    for name in ("edgeface_s_gamma_05", "edgeface_xxs"):
        assert describe_state_dict(timm.create_model(name, device="meta").state_dict()) == name
    model = timm.create_model("edgeface_xxs").eval()
    folder = save_pretrained(model, tmp_path / "pub", overwrite=True)
    again = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    card = (folder / "README.md").read_text()
    assert "An EdgeFace face-recognition backbone" in card and "| layout | edgeface |" in card
    with pytest.raises(ValueError, match="layout must be 'edgeface'"):
        timm.create_model("edgeface_xxs", layout="adaface", device="meta")
