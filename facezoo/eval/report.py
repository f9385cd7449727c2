"""Evaluation outputs: ``results.json`` (all numbers), ``results.md`` (the paper's table layout), ``roc.png``."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

DISPLAY_NAMES = {
    "lfw": "LFW",
    "cfp_fp": "CFP-FP",
    "cfp_ff": "CFP-FF",
    "agedb_30": "AgeDB-30",
    "calfw": "CALFW",
    "cplfw": "CPLFW",
    "vgg2_fp": "VGG2-FP",
    "IJBB": "IJB-B",
    "IJBC": "IJB-C",
}
_ROC_POINTS = 2000


def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name, name)


def far_label(far: float) -> str:
    """``1e-06`` -> ``1e-6`` (the paper's column labels)."""
    m, e = f"{far:.0e}".split("e")
    return f"{m}e{int(e)}"


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, n: int = _ROC_POINTS) -> Dict[str, list]:
    """At most ~n ROC points, evenly spaced in log-FPR (a 15M-point IJB ROC is too big for JSON and plots)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if len(fpr) > n:
        grid = np.logspace(np.log10(max(fpr[fpr > 0].min(), 1e-9)), 0, n)
        idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, len(fpr) - 1])
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {(far_label(k) if isinstance(k, float) else str(k)): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_results(
    model_name: str,
    verification: Optional[Mapping[str, Dict[str, Any]]] = None,
    ijb: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``results.json`` document: model, date, facezoo version, per-set numbers (scores left out)."""
    from facezoo import __version__

    doc: Dict[str, Any] = {
        "model": model_name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "facezoo_version": __version__,
        **(extra or {}),
    }
    if verification:
        doc["verification"] = {}
        for name, r in verification.items():
            r = {k: v for k, v in r.items() if k != "roc"}
            r["roc"] = {"fpr": verification[name]["roc"]["fpr"], "tpr": verification[name]["roc"]["tpr"]}
            doc["verification"][name] = r
        accs = [r["accuracy"] for r in verification.values()]
        doc["verification_average"] = float(np.mean(accs))
    if ijb:
        ij = {k: v for k, v in ijb.items() if k != "modes"}
        ij["modes"] = {}
        for mode, r in ijb["modes"].items():
            m = {k: v for k, v in r.items() if k not in ("scores", "roc")}
            if "roc" in r:
                m["roc"] = _thin_roc(r["roc"]["fpr"], r["roc"]["tpr"])
            ij["modes"][mode] = m
        doc["ijb"] = ij
    return _jsonable(doc)


def markdown_table(results: Mapping[str, Any]) -> str:
    """Paper-layout markdown: verification accuracy (%) +- std per set and their average; IJB TAR@FAR (%)."""
    lines = []
    model = results["model"]
    ver = results.get("verification")
    if ver:
        names = list(ver)
        lines.append("| Model | " + " | ".join(display_name(n) for n in names) + " | Average |")
        lines.append("|---" * (len(names) + 2) + "|")
        cells = [f"{100 * ver[n]['accuracy']:.2f} ± {100 * ver[n]['accuracy_std']:.2f}" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {100 * results['verification_average']:.2f} |")
    ijb = results.get("ijb")
    if ijb:
        if lines:
            lines.append("")
        target = display_name(ijb["target"])
        for mode, r in ijb["modes"].items():
            fars = list(r["tar_at_far"])
            if not lines or lines[-1] == "":
                lines.append("| Model | Mode | " + " | ".join(f"{target} TAR@FAR={f}" for f in fars) + " |")
                lines.append("|---" * (len(fars) + 2) + "|")
            lines.append(f"| {model} | {mode} | " + " | ".join(f"{100 * r['tar_at_far'][f]:.2f}" for f in fars) + " |")
        one_n = ijb.get("one_to_n")
        if one_n:
            lines.append("")
            lines.append(f"| Model | {target} 1:N gallery | Rank-1 | Rank-5 | TPIR@FPIR=1e-2 | TPIR@FPIR=1e-1 |")
            lines.append("|---|---|---|---|---|---|")
            for g, r in one_n.items():
                c, t = r["cmc"], r["tpir_at_fpir"]
                lines.append(
                    f"| {model} | {g} | {100 * c['1']:.2f} | {100 * c['5']:.2f} | "
                    f"{100 * t['1e-2']:.2f} | {100 * t['1e-1']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def plot_roc(results: Mapping[str, Any], path: Union[str, Path]) -> None:
    """ROC curves (TAR vs FAR, log FAR axis): one per verification set and per IJB mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, r in (results.get("verification") or {}).items():
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        ax.plot(fpr[fpr > 0], tpr[fpr > 0], lw=1.2, label=f"{display_name(name)} ({100 * r['accuracy']:.2f}%)")
    ijb = results.get("ijb")
    for mode, r in ((ijb or {}).get("modes") or {}).items():
        if "roc" in r:
            fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
            ax.plot(fpr[fpr > 0], tpr[fpr > 0], lw=1.2, label=f"{display_name(ijb['target'])} {mode}")
    ax.set_xscale("log")
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(f"ROC: {results['model']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Mapping[str, Any], out_dir: Union[str, Path]) -> Dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``roc.png`` under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "roc": out / "roc.png"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["markdown"].write_text(markdown_table(results))
    plot_roc(results, paths["roc"])
    return paths
