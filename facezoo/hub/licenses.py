"""The license a model card states, decided by one set of rules (:func:`resolve_license`), so that nobody has to guess.

Trained weights follow the terms of what they were made from, so the card's license is never a default the
exporter did not choose:

1. An explicit license (``--license`` / the recipe's ``export.license``) is stated as given; a warning says when
   the training data or the base model have stricter terms.
2. Otherwise every source of the weights is looked up: each training dataset (:data:`DATASET_TERMS`, by name; when
   no dataset is named, by the recipe's ``data.train``), and the base model of a fine-tune when it is a pretrained
   tag registered in :mod:`facezoo.models.pretrained`. When all sources carry one and the same license, that is the
   card's (facezoo's synthetic faces carry the project's license, apache-2.0); otherwise the card says ``license:
   other`` with a ``license_name`` and one line per source naming its terms (the face datasets of the field are for
   non-commercial research only).
3. A source facezoo has no terms for (an unknown dataset, a base model that is not a registered tag) makes the
   card ``license: other`` with a warning; with nothing known at all the card says the license is not stated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Terms",
    "CardLicense",
    "DATASET_TERMS",
    "PROJECT_LICENSE",
    "SYNTHETIC",
    "resolve_license",
    "dataset_terms",
    "base_model_info",
    "describe_training_data",
]

#: facezoo's own license (pyproject.toml, LICENSE), which weights trained only on its synthetic faces carry
PROJECT_LICENSE = "apache-2.0"
#: ``data.train`` / ``--dataset`` value of facezoo's built-in synthetic faces
SYNTHETIC = "synthetic"

_RESEARCH_ONLY = "non-commercial research only"


@dataclass(frozen=True)
class Terms:
    """What one source of a model's weights (a dataset, the synthetic faces, a base model) asks of them."""

    #: the source as the card names it, e.g. ``WebFace4M``
    source: str
    #: Hub license id: an SPDX-style id (``apache-2.0``) or ``other``
    license: str
    #: short id of the terms for the Hub's ``license_name`` when ``license`` is ``other``
    license_name: Optional[str] = None
    #: the terms in a few words, e.g. "non-commercial research only"
    note: str = ""


@dataclass(frozen=True)
class CardLicense:
    """The license part of a model card: front-matter fields, the body's statement, and what to warn about."""

    license: str
    license_name: Optional[str]
    #: the card body's license paragraph (Markdown)
    statement: str
    warnings: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        """``license`` with its ``license_name``, for the card's model table."""
        return f"{self.license} ({self.license_name})" if self.license_name else self.license


def _research(name: str, license_name: str, terms_of: str) -> Terms:
    return Terms(name, "other", license_name, f"{terms_of}'s terms: {_RESEARCH_ONLY}")


#: the face datasets facezoo knows, by canonical name (research datasets with non-commercial terms)
DATASET_TERMS: Dict[str, Terms] = {
    t.source: t
    for t in (
        *(_research(f"WebFace{n}", "webface260m-terms", "WebFace260M") for n in ("4M", "12M", "42M", "260M")),
        _research("MS1M", "ms-celeb-1m-terms", "MS-Celeb-1M"),
        _research("MS1MV2", "ms-celeb-1m-terms", "MS-Celeb-1M"),
        _research("MS1MV3", "ms-celeb-1m-terms", "MS-Celeb-1M"),
        _research("Glint360K", "glint360k-terms", "Glint360K"),
        _research("CASIA-WebFace", "casia-webface-terms", "CASIA-WebFace"),
        _research("VGGFace2", "vggface2-terms", "VGGFace2"),
    )
}

#: other spellings (normalized: lower case, letters and digits only), insightface's folder names among them
_ALIASES: Dict[str, str] = {
    **{f"wf{n.lower()}": f"WebFace{n}" for n in ("4M", "12M", "42M", "260M")},
    "msceleb1m": "MS1M",
    "facesemore": "MS1MV2",
    "emore": "MS1MV2",
    "ms1mretinaface": "MS1MV3",
    "ms1mretinafacet1": "MS1MV3",
    "glint": "Glint360K",
    "facesglint": "Glint360K",
    "casia": "CASIA-WebFace",
    "faceswebface112x112": "CASIA-WebFace",
    "vgg2": "VGGFace2",
    "facesvgg112x112": "VGGFace2",
}

_SYNTHETIC_TERMS = Terms(
    "facezoo synthetic faces",
    PROJECT_LICENSE,
    None,
    f"rendered by facezoo (no real faces), under facezoo's license, {PROJECT_LICENSE}",
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def dataset_terms(name: str) -> Optional[Terms]:
    """The terms of dataset ``name`` (any spelling: ``WebFace4M``, ``webface4m``, ``faces_emore``, ``synthetic``),
    or None when facezoo has none for it."""
    key = _key(name)
    if key == SYNTHETIC:
        return _SYNTHETIC_TERMS
    by_key = {_key(canonical): canonical for canonical in DATASET_TERMS}
    canonical = by_key.get(key) or _ALIASES.get(key)
    return DATASET_TERMS[canonical] if canonical else None


def _datasets_in_path(path: str) -> List[Terms]:
    """Known datasets named by the folders / file of ``path`` (``/data/faces_emore/train.rec`` -> MS1MV2)."""
    found: List[Terms] = []
    for part in PurePath(path).parts:
        for candidate in (part, PurePath(part).stem, *re.split(r"[_.\-]", part)):
            terms = dataset_terms(candidate) if candidate and _key(candidate) != SYNTHETIC else None
            if terms is not None and terms not in found:
                found.append(terms)
                break
    return found


def base_model_info(base_model: Optional[str]) -> Any:
    """The :class:`~facezoo.models.pretrained.PretrainedInfo` of ``base_model`` when it names a registered pretrained
    tag: ``arch.tag`` (also ``timm/arch.tag``) or the tag's Hub repository (``hf-hub:ORG/NAME``, ``ORG/NAME``);
    else None."""
    if not base_model:
        return None
    from facezoo.models.pretrained import list_pretrained_info, pretrained_info

    ref = base_model[len("hf-hub:") :] if base_model.startswith("hf-hub:") else base_model
    ref = ref.split("@", 1)[0]
    info = pretrained_info(ref[len("timm/") :] if ref.startswith("timm/") else ref)
    return info or next((i for i in list_pretrained_info() if i.hub_id == ref), None)


def _training_data(training: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    data = training.get("data") if isinstance(training, Mapping) else None
    return data if isinstance(data, Mapping) and isinstance(data.get("train"), str) else None


def describe_training_data(datasets: Optional[Sequence[str]], training: Optional[Mapping[str, Any]] = None) -> str:
    """The card's "training data" entry: the named datasets, else what the recipe's ``data`` trained on (the synthetic
    faces with their identities, images per identity and seed), else "not recorded"."""
    data = _training_data(training)
    if datasets:
        return ", ".join(datasets)
    if data is None:
        return "not recorded"
    if data["train"] != SYNTHETIC:
        return f"`{data['train']}` (dataset not named)"
    synth = data.get("synthetic") if isinstance(data.get("synthetic"), Mapping) else {}
    parts = [
        f"{synth[k]} {label}"
        for k, label in (("identities", "identities"), ("images_per_identity", "images per identity"))
        if k in synth
    ]
    parts += [f"{label} {synth[k]}" for k, label in (("seed", "seed"), ("difficulty", "difficulty")) if k in synth]
    return "facezoo synthetic faces (`data.train: synthetic`)" + (f": {', '.join(parts)}" if parts else "")


def _sources(
    datasets: Optional[Sequence[str]], training: Optional[Mapping[str, Any]], base_model: Optional[str]
) -> Tuple[List[Terms], List[str], List[str]]:
    """(terms of the known sources, the unknown sources by name, warnings) of the weights."""
    known: List[Terms] = []
    unknown: List[str] = []
    warnings: List[str] = []
    data = _training_data(training)
    if datasets:
        for name in datasets:
            terms = dataset_terms(name)
            if terms is None:
                unknown.append(f"dataset {name}")
            else:
                known.append(terms)
    elif data is not None and data["train"] == SYNTHETIC:
        known.append(_SYNTHETIC_TERMS)
    elif data is not None:
        inferred = _datasets_in_path(data["train"])
        known += inferred
        if inferred:
            warnings.append(
                f"training data {data['train']!r} taken to be {', '.join(t.source for t in inferred)} from its path; "
                "name it with --dataset (export.datasets in a recipe)"
            )
        else:
            unknown.append(f"training data `{data['train']}`")
    if base_model:
        info = base_model_info(base_model)
        if info is not None:
            slug = re.sub(r"[^a-z0-9]+", "-", info.name.split(".", 1)[-1].lower()).strip("-")
            name = f"{slug or 'base-model'}-terms" if info.license == "other" else None
            known.append(Terms(f"base model `{info.name}`", info.license, name, info.license_note))
        else:
            unknown.append(f"base model `{base_model}`")
    return known, unknown, warnings


def _join_names(names: Sequence[Optional[str]]) -> Optional[str]:
    distinct = list(dict.fromkeys(n for n in names if n))
    return "-and-".join(distinct) if distinct else None


def resolve_license(
    license: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    training: Optional[Mapping[str, Any]] = None,
    base_model: Optional[str] = None,
) -> CardLicense:
    """The card's license from what is known about the weights (the rules are in this module's docstring).

    Args:
        license: the exporter's choice (``--license`` / ``export.license``); None to derive it.
        datasets: training datasets as named for the card (``--dataset`` / ``export.datasets``).
        training: the resolved training recipe (its ``data`` section tells synthetic faces from a dataset).
        base_model: what a fine-tune started from (``--base-model`` / ``model.pretrained``).
    """
    known, unknown, warnings = _sources(datasets, training, base_model)
    if license:
        restricted = [t for t in known if t.license == "other"]
        if license != "other":
            for t in restricted:
                warnings.append(
                    f"license {license!r} was chosen, but the weights were made from {t.source} ({t.note}): "
                    "make sure those terms allow it"
                )
        name = (_join_names([t.license_name for t in restricted]) or "custom") if license == "other" else None
        return CardLicense(license, name, f"License: `{license}`, as chosen by the exporter.", tuple(warnings))
    if not known and not unknown:
        warnings.append(
            "no license and no training data named: the card says 'license: other' (license not stated); "
            "pass --license or --dataset (export.license / export.datasets in a recipe)"
        )
        statement = (
            "**License not stated.** The exporter named neither a license nor the training data of these weights; "
            "ask the publisher before using them."
        )
        return CardLicense("other", "not-stated", statement, tuple(warnings))
    for source in unknown:
        warnings.append(
            f"facezoo does not know the terms of {source}: the card says 'license: other'; "
            "set the license with --license (export.license in a recipe)"
        )
    licenses = {t.license for t in known}
    if not unknown and len(licenses) == 1 and "other" not in licenses:
        (only,) = licenses
        lines = "; ".join(f"{t.source}: {t.note}" for t in known)
        return CardLicense(only, None, f"License: `{only}`, the terms of what these weights were made from ({lines}).")
    lines = [f"- {t.source}: {t.note}" for t in known] + [f"- {u}: terms not known to facezoo" for u in unknown]
    research = any(_RESEARCH_ONLY in t.note for t in known)
    statement = (
        ("**Non-commercial research only.** " if research else "")
        + "These weights follow the terms of the data and models they were made from:\n\n"
        + "\n".join(lines)
    )
    name = _join_names([t.license_name for t in known] + (["training-data-terms"] if unknown else []))
    return CardLicense("other", name, statement, tuple(warnings))
