"""Pushing export folders to the Hugging Face Hub: one repo, a training run, or a folder of runs (and a collection).

Every folder is checked before anything is contacted (weights, config, card, repo id), and with a real push every
remote README is checked before anything is uploaded: a card facezoo did not write is kept unless
``overwrite_card=True``. Each repo gets exactly the staged folder: ``config.json``, ``model.safetensors`` and the card
with its Hub id filled in. ``dry_run=OUT`` writes those staged folders to ``OUT/ORG/NAME/`` with a
``push_plan.json`` (repo ids, files, sizes, sha256) and contacts nothing. The token comes from huggingface_hub
(``HF_TOKEN`` or the login cache); facezoo only hands it to ``HfApi`` and never writes or logs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from facezoo.errors import ConfigError, HubError, MissingPathError, require_path
from facezoo.hub.card import is_facezoo_card, retarget_card
from facezoo.hub.export import CARD_NAME, CONFIG_NAME, EXPORT_FILES, WEIGHTS_NAME, check_export_folder

__all__ = ["push", "find_exports", "check_repo_id", "PLAN_NAME"]

_logger = logging.getLogger(__name__)

PLAN_NAME = "push_plan.json"
PathLike = Union[str, os.PathLike]


def check_repo_id(repo_id: str, what: str = "--repo-id") -> str:
    """``repo_id`` if it has the form ``ORG/NAME`` with characters the Hub accepts, else :class:`ConfigError`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = str(repo_id).split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"{what} {repo_id!r}: expected ORG/NAME (a user or organization, a slash, the repo name), "
            "e.g. my-org/iresnet50_gwp_k7.arcface_webface4m"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"{what} {repo_id!r}: not a valid Hub repo id ({' '.join(str(exc).split())[:200]})") from None
    return repo_id


def _is_export(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file()


def find_exports(
    path: PathLike, repo_id: Optional[str] = None, repo_id_prefix: Optional[str] = None
) -> List[Tuple[Path, str]]:
    """(export folder, repo id) pairs for PATH: an export folder, a training run (its ``export/``) or a folder of
    runs (every ``export/`` below it, one repo each, named ``repo_id_prefix`` + the run folder's name)."""
    root = require_path(path, "export folder, training run or folder of runs", kind="dir")
    if repo_id and repo_id_prefix:
        raise ConfigError("give --repo-id (one repo) or --repo-id-prefix (one repo per run), not both")
    if not repo_id and not repo_id_prefix:
        raise ConfigError("give --repo-id ORG/NAME, or --repo-id-prefix ORG/ for a folder of runs")
    if repo_id_prefix is not None and "/" not in repo_id_prefix:
        repo_id_prefix += "/"
    if _is_export(root) or _is_export(root / "export"):
        folder = (root if _is_export(root) else root / "export").resolve()
        if repo_id:
            return [(folder, check_repo_id(repo_id))]
        name = folder.parent.name if folder.name == "export" else folder.name
        return [(folder, check_repo_id(repo_id_prefix + name, "--repo-id-prefix + run name"))]
    runs = sorted(p.parent for p in root.rglob(f"export/{CONFIG_NAME}"))
    if not runs:
        raise MissingPathError(
            f"{root}: no export folder here ({CONFIG_NAME} + {WEIGHTS_NAME}), no export/ in it "
            "and no run folders with an export/ below it; export with 'facezoo export hub'"
        )
    if repo_id:
        raise ConfigError(
            f"{root}: a folder of {len(runs)} runs needs --repo-id-prefix ORG/ (one repo per run), not --repo-id"
        )
    out, seen = [], {}
    for folder in runs:
        rid = check_repo_id(repo_id_prefix + folder.parent.name, "--repo-id-prefix + run name")
        if rid in seen:
            raise ConfigError(f"runs {seen[rid]} and {folder.parent} would both push to {rid}; rename one")
        seen[rid] = folder.parent
        out.append((folder, rid))
    return out


def _check_card(folder: Path) -> None:
    card = folder / CARD_NAME
    if not card.is_file():
        raise MissingPathError(f"{card}: no model card in the export folder; export with 'facezoo export hub'")
    if not is_facezoo_card(card.read_text(encoding="utf-8")):
        _logger.warning("%s: not a card facezoo generated; it is uploaded as it is", card)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stage(folder: Path, config: Dict[str, Any], repo_id: str, dest: Path) -> List[Dict[str, Any]]:
    """Write what ``repo_id`` receives from ``folder`` to ``dest``: the card and config naming ``repo_id``, the
    weights (hard-linked when possible). Returns the files with size and sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    block = dict(config.get("facezoo") or {})
    text = (folder / CARD_NAME).read_text(encoding="utf-8")
    if is_facezoo_card(text):
        text = retarget_card(text, block.get("repo_id"), repo_id)
    (dest / CARD_NAME).write_text(text, encoding="utf-8")
    block["repo_id"] = repo_id
    (dest / CONFIG_NAME).write_text(json.dumps(dict(config, facezoo=block), indent=2) + "\n", encoding="utf-8")
    try:
        os.link(folder / WEIGHTS_NAME, dest / WEIGHTS_NAME)
    except OSError:
        shutil.copyfile(folder / WEIGHTS_NAME, dest / WEIGHTS_NAME)
    return [
        {"path": name, "size": (dest / name).stat().st_size, "sha256": _sha256(dest / name)} for name in EXPORT_FILES
    ]


def _prepare_dry_run_dir(out: Path) -> None:
    """``out`` must be absent, empty, or an earlier dry run (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--dry-run {out}: exists and is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / PLAN_NAME).is_file():
            raise ConfigError(
                f"--dry-run {out}: folder exists, is not empty and is not an earlier dry run (no "
                f"{PLAN_NAME}); give a new folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def push(
    path: PathLike,
    repo_id: Optional[str] = None,
    *,
    repo_id_prefix: Optional[str] = None,
    collection: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    create_pr: bool = False,
    dry_run: Optional[PathLike] = None,
    overwrite_card: bool = False,
    token: Optional[str] = None,
) -> Dict[str, Any]:
    """Upload export folders to Hub model repos (``create_repo(exist_ok=True)`` + ``upload_folder``).

    Args:
        path: an export folder, a training output folder (its ``export/``) or a folder of runs.
        repo_id: ``ORG/NAME`` for a single export.
        repo_id_prefix: ``ORG/`` (or ``ORG/prefix-``) for a folder of runs: one repo per run, named after it.
        collection: title of a Hub collection (in the repos' namespace) to add every pushed repo to.
        private, revision, commit_message, create_pr: as ``HfApi.create_repo`` / ``upload_folder``.
        dry_run: a folder: write what would be uploaded (``ORG/NAME/`` per repo) and ``push_plan.json``, contact
            nothing.
        overwrite_card: replace a remote README.md that facezoo did not write.
        token: a Hub token; default: huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).

    Returns the plan (``push_plan.json``'s content), with each repo's commit URL after a real push.
    """
    targets = find_exports(path, repo_id, repo_id_prefix)
    configs = []
    for folder, _ in targets:
        configs.append(check_export_folder(folder))
        _check_card(folder)
    namespaces = sorted({rid.split("/")[0] for _, rid in targets})
    if collection is not None and (not collection.strip() or len(namespaces) > 1):
        raise ConfigError(
            f"--collection {collection!r}: needs a title and repos in one namespace (got {', '.join(namespaces)})"
        )
    message = commit_message or "Upload facezoo model"
    from facezoo import __version__

    plan: Dict[str, Any] = {
        "facezoo_version": __version__,
        "dry_run": dry_run is not None,
        "repos": [],
        "collection": {"title": collection, "namespace": namespaces[0]} if collection else None,
    }
    settings = {"private": private, "revision": revision, "commit_message": message, "create_pr": create_pr}
    if dry_run is not None:
        out = Path(dry_run).expanduser()
        _prepare_dry_run_dir(out)
        for (folder, rid), cfg in zip(targets, configs):
            files = _stage(folder, cfg, rid, out / rid)
            plan["repos"].append({"repo_id": rid, "source": str(folder), "folder": rid, **settings, "files": files})
        (out / PLAN_NAME).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        _logger.debug(
            "dry run: wrote %d repo folder(s) and %s to %s; nothing was uploaded", len(targets), PLAN_NAME, out
        )
        return plan
    return _upload(targets, configs, plan, settings, token=token, overwrite_card=overwrite_card)


def _hub_error(action: str, exc: Exception) -> HubError:
    return HubError(f"{action}: {type(exc).__name__}: {' '.join(str(exc).split())[:240]}")


def _upload(
    targets: List[Tuple[Path, str]],
    configs: List[Dict[str, Any]],
    plan: Dict[str, Any],
    settings: Dict[str, Any],
    token: Optional[str],
    overwrite_card: bool,
) -> Dict[str, Any]:
    from huggingface_hub import HfApi, get_token

    from facezoo import __version__

    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run OUT to see what "
            "would be uploaded)"
        )
    api = HfApi(token=token, library_name="facezoo", library_version=__version__)
    revision = settings["revision"]
    for _, rid in targets:  # every remote card is checked before anything is uploaded
        _check_remote_card(api, rid, revision, overwrite_card)
    with tempfile.TemporaryDirectory(prefix="facezoo-push-") as tmp:
        for (folder, rid), cfg in zip(targets, configs):
            staged = Path(tmp) / rid
            files = _stage(folder, cfg, rid, staged)
            try:
                url = api.create_repo(rid, private=True if settings["private"] else None, exist_ok=True)
                if revision and not settings["create_pr"]:
                    api.create_branch(rid, branch=revision, exist_ok=True)
                info = api.upload_folder(
                    repo_id=rid,
                    folder_path=str(staged),
                    commit_message=settings["commit_message"],
                    revision=revision,
                    create_pr=settings["create_pr"],
                    allow_patterns=list(EXPORT_FILES),
                )
            except Exception as exc:
                if not _is_hub_exception(exc):
                    raise
                raise _hub_error(f"pushing {folder} to {rid}", exc) from None
            commit = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
            _logger.debug("pushed %s to %s (%s)", folder, getattr(url, "url", rid), commit)
            plan["repos"].append({"repo_id": rid, "source": str(folder), **settings, "files": files, "commit": commit})
    if plan["collection"]:
        _add_to_collection(api, plan["collection"], [rid for _, rid in targets])
    return plan


def _is_hub_exception(exc: Exception) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"HfHubHTTPError", "HFValidationError", "ConnectionError", "TimeoutError", "OSError"})


def _check_remote_card(api: Any, repo_id: str, revision: Optional[str], overwrite_card: bool) -> None:
    """Refuse (before any upload) to replace a remote README.md that facezoo did not generate."""
    try:
        if not api.file_exists(repo_id, CARD_NAME, revision=revision):
            return
        local = api.hf_hub_download(repo_id, CARD_NAME, revision=revision)
    except Exception as exc:
        if not _is_hub_exception(exc):
            raise
        raise _hub_error(f"checking {repo_id}/{CARD_NAME} on the Hub", exc) from None
    if is_facezoo_card(Path(local).read_text(encoding="utf-8")):
        return
    if not overwrite_card:
        raise HubError(
            f"{repo_id}: the Hub repo's {CARD_NAME} was not written by facezoo (a hand-written card); "
            "pass --overwrite-card to replace it"
        )
    _logger.warning("%s: replacing the hand-written %s (--overwrite-card)", repo_id, CARD_NAME)


def _add_to_collection(api: Any, collection: Dict[str, Any], repo_ids: List[str]) -> None:
    try:
        made = api.create_collection(collection["title"], namespace=collection["namespace"], exists_ok=True)
        for rid in repo_ids:
            api.add_collection_item(made.slug, item_id=rid, item_type="model", exists_ok=True)
    except Exception as exc:
        if not _is_hub_exception(exc):
            raise
        raise _hub_error(f"adding the repos to collection {collection['title']!r}", exc) from None
    collection["slug"] = made.slug
    _logger.debug("collection %r (%s): %d model(s)", collection["title"], made.slug, len(repo_ids))
