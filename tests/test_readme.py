"""Every ```python block of README.md runs as written, on small inputs, offline.

How it works: the blocks are read from README.md in order. The files they name are made once, small, in a temporary
folder: :data:`FILES` maps a string that appears in a snippet (a path, as the snippet spells it) to the function
that makes it there. Then ONE fresh Python process (``HF_HUB_OFFLINE=1``, an empty Hugging Face cache, that folder
as the working directory) runs every snippet in its own namespace, so each must import what it uses; each snippet is
then one test here, failing with its traceback.

Adding a snippet to README.md: one that needs no file just runs. One that names a new file gets an entry in
:data:`FILES`: ``"my_file.bin": _my_builder`` with ``def _my_builder(dest: Path, fixture) -> None`` writing ``dest``
(``fixture("make_bins")`` hands out any fixture of tests/conftest.py). A snippet that cannot run here (it needs a GPU
or several processes) gets an entry in :data:`NOT_RUN` with the reason; keep that list short.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

Fixture = Callable[[str], Any]


class Snippet(NamedTuple):
    line: int  # line of the code's first line in README.md
    section: str
    code: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{re.sub(r'[^a-z0-9]+', '-', self.section.lower()).strip('-')}"


def readme_snippets(text: str) -> List[Snippet]:
    """The ```python blocks of a markdown text, with the heading they sit under."""
    out, section, block, start = [], "top", None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if block is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.strip() == "```python":
                block, start = [], number + 1
        elif line.strip() == "```":
            out.append(Snippet(start, section, "\n".join(block) + "\n"))
            block = None
        else:
            block.append(line)
    return out


SNIPPETS = readme_snippets(README.read_text())


# --- the files the snippets name -------------------------------------------------------------------------------------


def _backbone_pth(dest: Path, fixture: Fixture) -> None:
    """An insightface-style iresnet18 state_dict (torch.save, as arcface_torch writes backbone.pth)."""
    import timm

    import facezoo  # noqa: F401

    torch.manual_seed(0)
    torch.save(timm.create_model("iresnet18").state_dict(), dest)


def _rec_folder(dest: Path, fixture: Fixture) -> None:
    fixture("make_face_records")(dest, num_identities=3, per_identity=2)


def _identity_folders(dest: Path, fixture: Fixture) -> None:
    from facezoo.data import SyntheticFaces, encode_image

    faces = SyntheticFaces(2, 2, seed=1)
    for i in range(len(faces)):
        image, label = faces[i]
        (dest / f"person_{label}").mkdir(parents=True, exist_ok=True)
        (dest / f"person_{label}" / f"{i}.jpg").write_bytes(encode_image(image, "jpeg", 90))


def _hf_faces(dest: Path, fixture: Fixture) -> None:
    """A Hugging Face face dataset (save_to_disk: Image + ClassLabel), converted from a small .rec."""
    from facezoo.data.convert import rec_to_hf

    fixture("make_face_records")(dest.parent / "_rec_for_hf", num_identities=2, per_identity=2)
    rec_to_hf(dest.parent / "_rec_for_hf", dest, format="arrow", progress=False)


def _mbf_backbone_pth(dest: Path, fixture: Fixture) -> None:
    """A MobileFaceNet state_dict saved as arcface_torch saves an mbf ``backbone.pth``."""
    import timm

    import facezoo  # noqa: F401

    torch.manual_seed(0)
    torch.save(timm.create_model("mobilefacenet").state_dict(), dest)


def _lfw_bin(dest: Path, fixture: Fixture) -> None:
    fixture("make_bins")(dest.parent, bins=[dest.stem], pairs_datasets=[], num_pairs=10)  # 10 folds: 10 pairs


def _pairs_dataset(dest: Path, fixture: Fixture) -> None:
    fixture("make_bins")(dest.parent, bins=[], pairs_datasets=[dest.name], num_pairs=10)


def _ijb_release(dest: Path, fixture: Fixture) -> None:
    fixture("make_ijb_release")(dest, n_subjects=2)


def _results_json(dest: Path, fixture: Fixture) -> None:
    """A real ``facezoo eval`` results document (10 verification pairs, random embeddings)."""
    from facezoo.eval import report, verification

    g = torch.Generator().manual_seed(0)
    res = verification.evaluate(torch.nn.functional.normalize(torch.randn(20, 8, generator=g)), [True, False] * 5)
    doc = report.build_results("iresnet18_gwp_k7", {"lfw": res}, None, extra={"checkpoint": None, "flip": True})
    dest.write_text(json.dumps(doc))


def _exported(dest: Path, name: str, **kwargs: Any) -> None:
    import timm

    import facezoo  # noqa: F401
    from facezoo.hub import save_pretrained

    torch.manual_seed(0)
    save_pretrained(timm.create_model(name, **kwargs), dest, overwrite=True)


def _hub_model(dest: Path, fixture: Fixture) -> None:
    """``my-org/...`` in the runner's offline Hugging Face cache.

    The cache is ``<work>/.hf_cache``; ``dest`` is ``<work>/ORG/NAME``.
    """
    work, repo_id = dest.parents[1], f"{dest.parent.name}/{dest.name}"
    snapshot = work / ".hf_cache" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    _exported(snapshot, "iresnet50_gwp_k7")
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)


def _quickstart_export(dest: Path, fixture: Fixture) -> None:
    """The quickstart's ``export/``, untrained: the model its recipe names, with the recipe's model args."""
    from facezoo.train import load_recipe

    model = load_recipe(REPO / "recipes" / "quickstart.yaml").model
    _exported(dest, model.name, embed_dim=model.embed_dim, **model.args)


def _recipe(dest: Path, fixture: Fixture) -> None:
    dest.write_text((REPO / "recipes" / dest.name).read_text())


#: what a snippet names (as it spells the path) -> the function that makes it, small, under that path
FILES: Dict[str, Callable[[Path, Fixture], None]] = {
    "backbone.pth": _backbone_pth,
    "mbf/backbone.pth": _mbf_backbone_pth,
    "faces_webface4m/": _rec_folder,
    "aligned/": _identity_folders,
    "faces_hf/": _hf_faces,
    "lfw.bin": _lfw_bin,
    "lfw_hf/": _pairs_dataset,
    "IJB_release/IJBC": _ijb_release,
    "eval_out/results.json": _results_json,
    "my-org/iresnet50_gwp_k7.arcface_webface4m": _hub_model,
    "runs/quickstart/export": _quickstart_export,
    "recipes/quickstart.yaml": _recipe,
}

#: snippets that are not run here, by a string they contain -> why
NOT_RUN: Dict[str, str] = {}


# --- running them ----------------------------------------------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import json, sys, time, traceback

    snippets = json.load(open(sys.argv[1]))
    results = {}
    for s in snippets:
        t0 = time.perf_counter()
        try:
            exec(compile(s["code"], f"README.md:{s['line']}", "exec"), {"__name__": "__main__"})
            results[s["id"]] = {"ok": True}
        except BaseException:
            results[s["id"]] = {"ok": False, "error": traceback.format_exc(limit=-3)}
        results[s["id"]]["seconds"] = round(time.perf_counter() - t0, 2)
        json.dump(results, open(sys.argv[2], "w"))
""")


def _not_run(snippet: Snippet) -> str:
    return next((why for marker, why in NOT_RUN.items() if marker in snippet.code), "")


@pytest.fixture(scope="module")
def snippet_results(tmp_path_factory, request) -> Dict[str, Dict[str, Any]]:
    work = tmp_path_factory.mktemp("readme")
    runnable = [s for s in SNIPPETS if not _not_run(s)]
    for marker, build in FILES.items():
        if any(marker in s.code for s in runnable):
            dest = work / marker.rstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            build(dest, request.getfixturevalue)
    (work / "snippets.json").write_text(json.dumps([dict(s._asdict(), id=s.id) for s in runnable]))
    (work / "runner.py").write_text(RUNNER)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(work / ".hf_home"),
        HF_HUB_CACHE=str(work / ".hf_cache"),
        HF_DATASETS_CACHE=str(work / ".hf_datasets"),
        HF_ENDPOINT="http://127.0.0.1:9",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="2",
    )
    env.pop("FACEZOO_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "runner.py", "snippets.json", "results.json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    if proc.returncode != 0:
        results["__process__"] = {"ok": False, "error": proc.stderr[-3000:]}
    return results


def test_readme_has_python_snippets():
    sections = {s.section for s in SNIPPETS}
    assert len(SNIPPETS) >= 6 and {"Models", "Data", "Evaluation"} <= sections, [s.id for s in SNIPPETS]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_readme_snippet_runs(snippet_results, snippet):
    why = _not_run(snippet)
    if why:
        pytest.skip(why)
    assert "__process__" not in snippet_results, snippet_results["__process__"]["error"]
    result = snippet_results.get(snippet.id)
    assert result is not None, f"the snippet at README.md:{snippet.line} did not run"
    assert result["ok"], f"README.md:{snippet.line} ({snippet.section}) failed:\n{result['error']}"
