"""Recipes: every key documented, every YAML loads, every recipe family trains on a CPU, generated tables current."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import facezoo  # noqa: F401  (registers the models)
from facezoo.train import Trainer, load_recipe, recipe_keys
from facezoo.train.checkpoint import list_checkpoints

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# a model and data small enough for 3 CPU steps in about a second; model.args entries are set one by one so that a
# recipe's own ones (the AdaFace recipe's drop_rate) stay in the run
TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args.widths=[8, 8, 16, 16]",
    "model.args.img_size=32",
    "data.train=synthetic",
    "data.synthetic.identities=16",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.max_steps=3",
    'train.mixed_precision="no"',
    "eval.targets=[]",
    "export.enabled=false",
    "train.tensorboard=false",
]
_STEP_LINE = re.compile(r"step (\d+)/(\d+) epoch \d+ loss (\S+)")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from more, and on a shared CPU several threads per
    process make the runs many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _script(path: Path) -> ModuleType:
    """Import one of the recipes/ scripts by path (registered in sys.modules first: its dataclasses need it)."""
    name = f"_recipes_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _assert_finished(run: Path, steps: int = 3) -> None:
    """The run went to its last step: a checkpoint of that step, and a finite loss logged for it."""
    checkpoints = list_checkpoints(run)
    assert checkpoints and checkpoints[-1].name == f"step_{steps}"
    assert json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"] == steps
    logged = {int(m[1]): (int(m[2]), float(m[3])) for m in _STEP_LINE.finditer((run / "train.log").read_text())}
    assert logged[steps][0] == steps and math.isfinite(logged[steps][1]), logged


# --- (a) documentation --------------------------------------------------------------------------------------------


def test_every_recipe_key_is_documented():
    text = (RECIPES / "README.md").read_text()
    missing = [k for k in recipe_keys() if f"`{k}`" not in text]
    assert not missing, f"recipes/README.md does not document {missing}; run python recipes/make_keys_table.py"
    keys_table = _script(RECIPES / "make_keys_table.py")
    assert keys_table.BLOCK.current(text) == keys_table.generate(), (
        "recipes/README.md key reference is out of date; run python recipes/make_keys_table.py"
    )


# --- (b) every recipe file ----------------------------------------------------------------------------------------


def test_every_recipe_file_loads():
    files = sorted(RECIPES.rglob("*.yaml"))
    names = {str(f.relative_to(RECIPES)) for f in files}
    assert {
        "quickstart.yaml",
        "finetune.yaml",
        "paper/arcface.yaml",
        "paper/adaface.yaml",
        "zoo/mbf_arcface.yaml",
    } <= names
    assert "paper.yaml" not in names  # the old placeholder is gone
    for f in files:
        load_recipe(f)


def test_paper_recipes_state_the_papers_settings():
    arc = load_recipe(RECIPES / "paper" / "arcface.yaml")
    assert (arc.loss.name, arc.loss.s, arc.loss.args) == ("combined", 64.0, {"m1": 1.0, "m2": 0.0, "m3": 0.4})
    assert (arc.optim.name, arc.optim.lr, arc.optim.momentum, arc.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (arc.schedule.name, arc.train.epochs, arc.train.mixed_precision) == ("polynomial", 20, "fp16")
    assert (arc.optim.clip_grad_norm, arc.data.batch_size, arc.loss.sample_rate) == (5.0, 1024, 1.0)
    ada = load_recipe(RECIPES / "paper" / "adaface.yaml")
    assert (ada.loss.name, ada.loss.s, ada.loss.m, ada.loss.args) == (
        "adaface",
        64.0,
        0.4,
        {"h": 0.333, "t_alpha": 0.01},
    )
    assert (ada.optim.lr, ada.optim.momentum, ada.optim.weight_decay, ada.optim.no_weight_decay_on_bn) == (
        0.1,
        0.9,
        5e-4,
        True,
    )
    assert (ada.schedule.name, ada.schedule.milestones, ada.schedule.gamma, ada.train.epochs) == (
        "multistep",
        [12, 20, 24],
        0.1,
        26,
    )
    assert ada.data.batch_size == 512 and ada.model.args == {"drop_rate": 0.4}
    a = ada.data.augment
    assert (a.flip, a.crop, a.low_res, a.photometric) == (0.5, 0.2, 0.2, 0.2)
    for r in (arc, ada):
        assert (r.model.name, r.model.embed_dim, r.data.train) == ("iresnet50", 512, "/data/webface4m")
        assert [Path(t).name for t in r.eval.targets] == [
            f"{n}.bin" for n in ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
        ]


# --- (c) every recipe family trains -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart", "paper/arcface", "paper/adaface"])
def test_recipe_runs(name, tmp_path):
    recipe = load_recipe(RECIPES / f"{name}.yaml", TINY)
    Trainer(recipe, tmp_path, progress=False).fit()
    _assert_finished(tmp_path)
    resolved = load_recipe(tmp_path / "recipe.yaml")  # the recipe's own settings reached the run
    assert resolved.loss == recipe.loss and resolved.optim == recipe.optim and resolved.schedule == recipe.schedule


def test_zoo_mbf_recipe_states_insightface_settings_and_runs(tmp_path):
    """recipes/zoo/mbf_arcface.yaml: insightface's wf4m_mbf values; 3 CPU steps of a width-scale-1 GWP MobileFaceNet
    at 32x32 (the recipe's fp16 flag stays: it does nothing on a CPU)."""
    mbf = load_recipe(RECIPES / "zoo" / "mbf_arcface.yaml")
    assert (mbf.model.name, mbf.model.embed_dim, mbf.model.args) == ("mobilefacenet", 512, {"fp16": True})
    assert (mbf.loss.name, mbf.loss.s, mbf.loss.args) == ("combined", 64.0, {"m1": 1.0, "m2": 0.0, "m3": 0.4})
    assert (mbf.optim.name, mbf.optim.lr, mbf.optim.momentum, mbf.optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (mbf.data.batch_size, mbf.train.epochs, mbf.schedule.name, mbf.schedule.warmup_epochs) == (
        1024,
        20,
        "polynomial",
        0,
    )
    tiny = [o for o in TINY if not o.startswith(("model.name", "model.args.widths"))]
    overrides = tiny + ["model.name=mobilefacenet_gwp", "model.args.scale=1", "model.args.global_pool=gwp_softmax"]
    recipe = load_recipe(RECIPES / "zoo" / "mbf_arcface.yaml", overrides)
    Trainer(recipe, tmp_path, progress=False).fit()
    _assert_finished(tmp_path)
    weights = load_file(str(list_checkpoints(tmp_path)[-1] / "backbone.safetensors"))
    assert weights["features.layers.0.logits"].shape == (2, 2)  # the learnable kernel of the 2x2 map was saved
    initial = timm.create_model("mobilefacenet_gwp", scale=1, img_size=32, global_pool="gwp_softmax")
    assert not torch.equal(weights["features.layers.0.logits"], initial.state_dict()["features.layers.0.logits"])


def test_finetune_runs_from_a_pretrained_file(tmp_path):
    # a "pretrained" tiny model whose weights cannot be mistaken for a fresh initialisation
    src = timm.create_model("iresnet18_gwp", embed_dim=32, widths=[8, 8, 16, 16], img_size=32)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05)
    weights = tmp_path / "pretrained.safetensors"
    save_file({k: v.detach().contiguous() for k, v in src.state_dict().items()}, str(weights))
    frozen = ("conv1", "bn1", "prelu", "layer1")
    recipe = load_recipe(
        RECIPES / "finetune.yaml", TINY + [f"model.pretrained={weights}", f"model.freeze=[{','.join(frozen)}]"]
    )
    run = tmp_path / "run"
    Trainer(recipe, run, progress=False).fit()
    _assert_finished(run)
    before = load_file(str(weights))
    after = load_file(str(list_checkpoints(run)[-1] / "backbone.safetensors"))
    # frozen modules are exactly the pretrained ones (weights loaded, no update, BatchNorm statistics kept) ...
    for k, v in after.items():
        if k.split(".")[0] in frozen:
            assert torch.equal(v, before[k]), k
    # ... and the rest was trained
    assert not torch.equal(after["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


# --- (d) the paper's run table ------------------------------------------------------------------------------------


def test_paper_table_is_current():
    table = _script(RECIPES / "paper" / "make_table.py")
    text = (RECIPES / "paper" / "README.md").read_text()
    block = table.generate()
    assert table.BLOCK.current(text) == block, (
        "recipes/paper/README.md is out of date; run python recipes/paper/make_table.py"
    )
    rows = [line for line in block.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 48 and len({r.split("|")[6] for r in rows}) == 24  # 2 losses x 24 distinct models
    assert sum("not reported" not in r for r in rows) == len(table.TARGETS)


# --- (e) the model-zoo recipes ------------------------------------------------------------------------------------

# a 1-block ViT of width 32 on a 36x36 input (a 4x4 token grid), replacing TINY's IResNet overrides
VIT_TINY = [o for o in TINY if not o.startswith("model.")] + [
    "model.name=vitface_t_gwp",
    "model.embed_dim=32",
    "model.args.width=32",
    "model.args.depth=1",
    "model.args.num_heads=2",
    "model.args.img_size=36",
]


def test_vit_recipe_states_insightface_settings():
    vit = load_recipe(RECIPES / "zoo" / "vit_arcface.yaml")
    assert (vit.model.name, vit.model.embed_dim, vit.model.args) == (
        "vitface_t",
        512,
        {"drop_path_rate": 0.05, "mask_ratio": 0.0},  # vit_t_dp005_mask0
    )
    assert (vit.loss.name, vit.loss.s, vit.loss.args, vit.loss.sample_rate) == (
        "combined",
        64.0,
        {"m1": 1.0, "m2": 0.0, "m3": 0.4},
        0.3,
    )
    assert (vit.optim.name, vit.optim.lr, vit.optim.weight_decay, vit.optim.clip_grad_norm) == ("adamw", 1e-3, 0.1, 5.0)
    assert (vit.schedule.name, vit.schedule.power, vit.schedule.warmup_epochs) == ("polynomial", 1.0, 4)
    assert (vit.train.epochs, vit.train.mixed_precision, vit.data.batch_size) == (40, "fp16", 512 * 8)
    assert vit.eval.targets == []


def test_vit_recipe_runs_from_the_command_line(tmp_path, capsys):
    from facezoo.cli import main

    run = tmp_path / "run"
    argv = ["train", str(RECIPES / "zoo" / "vit_arcface.yaml"), "--output-dir", str(run), "--quiet", *VIT_TINY]
    assert main(argv) == 0, capsys.readouterr().err
    _assert_finished(run)
    resolved = load_recipe(run / "recipe.yaml")
    assert resolved.model.name == "vitface_t_gwp" and resolved.model.args["mask_ratio"] == 0.0
    assert resolved.optim.name == "adamw" and resolved.loss.sample_rate == 0.3
