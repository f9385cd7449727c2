"""``create_model``: ``timm.create_model`` for the places where a user names a model, with errors that help.

The command line, training recipes, evaluation and export all take a model as a string: a timm name
(``iresnet50_gwp_k7``), ``hf-hub:ORG/NAME``, ``local-dir:PATH`` or a weights file for a name. This wraps timm so
that every mistake is one clear :class:`facezoo.errors.FacezooError`: an unknown name suggests the closest
registered ones, a missing folder or checkpoint is named at once (never looked up on the Hub), a file that is not a
checkpoint says so, and an unreachable Hub fails within seconds with a message saying it is the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from facezoo.errors import CheckpointError, HubError, MissingPathError, UnknownNameError, did_you_mean
from facezoo.models.checkpoints import check_checkpoint_file, checkpoint_load_error
from facezoo.models.pretrained import is_pretrained_tag

__all__ = ["create_model", "check_model_name", "check_hub_reachable", "hub_offline", "HUB_TIMEOUT"]

#: seconds a Hub lookup may take before facezoo reports the Hub unreachable
HUB_TIMEOUT = 10.0


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownNameError` with the closest registered names when timm does not know ``name``."""
    import timm

    import facezoo  # noqa: F401  (registers the face models)

    base = name.split(".", 1)[0]
    if timm.is_model(base):
        if "." in name:  # a pretrained tag (architecture.tag) must be one of the architecture's
            from facezoo.models.pretrained import check_pretrained_tag

            check_pretrained_tag(name)
        return
    raise UnknownNameError(
        f"unknown model {name!r}{did_you_mean(base, timm.list_models())} ('facezoo models' lists "
        "the face models; any timm model name works too)"
    )


def check_hub_reachable(repo_id: str, repo_type: str = "model", timeout: Optional[float] = None) -> None:
    """Fail fast with :class:`HubError` when the Hub cannot be asked about ``repo_id`` (no network, unknown repo).

    ``timeout`` defaults to :data:`HUB_TIMEOUT` seconds. With ``HF_HUB_OFFLINE=1`` nothing is asked: the local
    Hugging Face cache answers (or the caller's load fails; :func:`hub_offline` tells the caller to say why).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if HF_HUB_OFFLINE or hub_offline():
        return
    repo = repo_id.split("@", 1)[0]
    try:
        HfApi().repo_info(repo, repo_type=repo_type, timeout=HUB_TIMEOUT if timeout is None else timeout)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise HubError(
            f"{repo_id}: no such {repo_type} repository on the Hugging Face Hub, or it is private or "
            f"gated and needs a token ({type(exc).__name__}); check the id or run `hf auth login`"
        ) from None
    except Exception as exc:  # connection refused, DNS failure, timeout, proxy, HTTP 5xx
        if not _is_network_error(exc):
            raise
        raise HubError(
            f"{repo_id}: cannot reach the Hugging Face Hub ({' '.join(str(exc).split())[:160]}); check the "
            "network, or set HF_HUB_OFFLINE=1 to load from the local cache, or pass a local path"
        ) from None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for the local Hugging Face cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "on", "yes")


def offline_cache_miss(repo_id: str, repo_type: str = "model") -> HubError:
    """The error for a Hub id that is not in the local cache while ``HF_HUB_OFFLINE=1``."""
    return HubError(
        f"{repo_id}: HF_HUB_OFFLINE=1 and this {repo_type} is not in the local Hugging Face cache, so the "
        "Hub is not asked; unset HF_HUB_OFFLINE to download it, or pass a local path"
    )


def _is_network_error(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "TimeoutError",
            "ConnectError",
            "TimeoutException",
            "NetworkError",
            "TransportError",
            "ProxyError",
            "HfHubHTTPError",
            "OSError",
        }
    )


def create_model(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    pretrained: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """``timm.create_model(name, ...)`` with facezoo's checks first; returns the model on ``device`` (train mode).

    Args:
        name: a timm model name (facezoo's or any other), a pretrained tag (``iresnet100.adaface_webface12m``: its
            weights are loaded), ``hf-hub:ORG/NAME[@REV]`` or ``local-dir:PATH``.
        checkpoint: a local ``.safetensors`` / ``.pth`` / ``.ckpt`` loaded through timm's pretrained path
            (``pretrained_cfg_overlay=dict(file=...)``, so the model's checkpoint filter maps foreign layouts).
        pretrained: load the name's default pretrained weights (implied by ``hf-hub:``, ``local-dir:`` and
            ``checkpoint``).
        kwargs: passed to ``timm.create_model`` (``num_classes``, ``embed_dim``, ``layout``, ``drop_rate``, ...).
    """
    import timm

    import facezoo  # noqa: F401

    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not folder.is_dir():
            raise MissingPathError(
                f"{folder}: no such model folder (local-dir: needs a folder with config.json and "
                "model.safetensors, as 'facezoo export hub' writes)"
            )
        if not (folder / "config.json").is_file():
            raise MissingPathError(
                f"{folder}: no config.json in this model folder (expected timm's config.json "
                "beside model.safetensors, as 'facezoo export hub' writes)"
            )
        _check_config_architecture(folder / "config.json")
        pretrained = True
    elif name.startswith("hf-hub:"):
        check_hub_reachable(name[len("hf-hub:") :])
        pretrained = True
    else:
        check_model_name(name)
        if checkpoint is None and is_pretrained_tag(name):
            pretrained = True  # a tag names its weights
    if checkpoint is not None:
        path = check_checkpoint_file(checkpoint)
        kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, file=str(path))
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    except Exception as exc:
        raise _creation_error(name, checkpoint, exc) from None
    return model.to(device) if device is not None else model


def _creation_error(name: str, checkpoint: Optional[Union[str, os.PathLike]], exc: Exception) -> Exception:
    """The facezoo error for what ``timm.create_model`` raised, or ``exc`` itself when it is none of the user's."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Unknown model"):
        # an hf-hub / local-dir config naming an architecture nobody registered
        return UnknownNameError(f"{name}: {text}; is it a facezoo model saved by a newer facezoo?")
    if isinstance(exc, RuntimeError) and "No suitable checkpoints found" in text:
        return MissingPathError(f"{name}: no weights file (model.safetensors) in the model folder")
    if (
        name.startswith("hf-hub:")
        and hub_offline()
        and type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
    ):
        return offline_cache_miss(name[len("hf-hub:") :])
    error = checkpoint_load_error(checkpoint, exc) if checkpoint is not None else None
    return error if error is not None else exc


def _check_config_architecture(config: Path) -> None:
    """A local model folder's ``config.json`` must parse and name an architecture timm knows."""
    import json

    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config}: not a timm config.json ({exc})") from None
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str):
        raise CheckpointError(f"{config}: no 'architecture' field (expected timm's config.json)")
    try:
        check_model_name(arch)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{config}: architecture {arch!r} is not a registered model ({exc})") from None
