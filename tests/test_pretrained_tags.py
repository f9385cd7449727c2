"""Pretrained tags (``iresnet100.adaface_webface12m``): CVLface's Hub repositories, laid out here in an offline
Hugging Face cache, load by name through timm and reproduce the source network's own forward on RGB input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Sequence

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from test_models import RefBlock  # insightface's IBasicBlock, written in that test from arcface_torch
from test_models_adaface import BasicBlockIR, Flatten  # AdaFace's IR unit, written in that test from AdaFace

import facezoo  # noqa: F401
from facezoo.errors import CheckpointError, HubError, UnknownNameError
from facezoo.models import create_model
from facezoo.models.pretrained import list_pretrained_info, pretrained_info, pretrained_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
#: narrow widths and a small embedding keep every depth fast; the key names and the layout are CVLface's
WIDTHS, EMBED = (8, 16, 32, 64), 32
UNITS = {"ir18": [2, 2, 2, 2], "ir50": [3, 4, 14, 3], "ir101": [3, 13, 30, 3]}
#: the channel order each fake repository states (the real ones state theirs; facezoo reads it, never assumes it)
BGR_REPOS = {"minchul/cvlface_adaface_ir50_ms1mv2", "minchul/cvlface_arcface_ir101_webface4m"}

# --- CVLface's two IR networks, written here from cvlface/research/recognition/code/run_v1/models/ ---------------


class CVLfaceIR(nn.Module):
    """``iresnet/model.py`` ``Backbone(mode='ir')``: input_layer, body of BasicBlockIR, output_layer (BN2d,
    Dropout 0.4, Flatten, Linear, BN1d without affine); forward returns the unnormalized embedding."""

    def __init__(self, units: Sequence[int], widths=WIDTHS, embed: int = EMBED, map_area: int = 49):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))  # fmt: skip
        blocks, chs = [], widths[0]
        for width, n in zip(widths, units):
            blocks += [BasicBlockIR(chs, width, 2)] + [BasicBlockIR(width, width, 1) for _ in range(n - 1)]
            chs = width
        self.body = nn.Sequential(*blocks)
        linear = nn.Linear(chs * map_area, embed)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(chs), nn.Dropout(0.4), Flatten(), linear,
                                          nn.BatchNorm1d(embed, affine=False))  # fmt: skip

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


class CVLfaceInsightface(nn.Module):
    """``iresnet_insightface/model.py`` ``iresnet100()``: insightface names, dropout 0, ``features`` BN1d whose
    weight is fixed at 1."""

    def __init__(self, units: Sequence[int], widths=WIDTHS, embed: int = EMBED):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        chs = widths[0]
        for i, (width, n) in enumerate(zip(widths, units), start=1):
            down = nn.Sequential(nn.Conv2d(chs, width, 1, 2, bias=False), nn.BatchNorm2d(width, eps=1e-05))
            layers = [RefBlock(chs, width, 2, down)] + [RefBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            chs = width
        self.bn2 = nn.BatchNorm2d(chs, eps=1e-05)
        self.dropout = nn.Dropout(p=0, inplace=True)
        self.fc = nn.Linear(chs * 49, embed)
        self.features = nn.BatchNorm1d(embed, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _randomized(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, PReLU slopes and biases, so a wrong key map or a missing flip shows."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, 0.2, generator=g)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    if m.weight.requires_grad:
                        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


def source_network(repo: str, **kwargs) -> nn.Module:
    """The network of CVLface repository ``repo`` (``minchul/cvlface_{loss}_{arch}_{data}``), randomized."""
    _, loss, arch, _ = repo.split("/")[1].split("_", 3)
    cls = CVLfaceInsightface if loss == "arcface" else CVLfaceIR
    return _randomized(cls(UNITS[arch], **kwargs), seed=len(repo))


def write_cvlface_repo(
    folder: Path, net: nn.Module, repo: str, color_space="RGB", yaml=True, conf_override=None
) -> None:
    """The files of a CVLface Hub repository: ``model.safetensors`` as its transformers wrapper saves it (keys
    ``model.net.*``), ``config.json``, ``files.txt``, ``wrapper.py``, ``pretrained_model/model.yaml`` and a
    ``pretrained_model/model.pt`` that is no pickle at all (facezoo must never read it).
    ``conf_override`` replaces fields of the model config (an IR repository's by default)."""
    _, loss, arch, _ = repo.split("/")[1].split("_", 3)
    family = "iresnet_insightface" if loss == "arcface" else "iresnet"
    sd = {f"model.net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"))
    conf = {"color_space": color_space, "freeze": False, "input_size": [3, 112, 112], "name": arch,
            "output_dim": EMBED, "start_from": "", "yaml_path": f"models/{family}/configs/v1_{arch}.yaml"}  # fmt: skip
    conf.update(conf_override or {})
    (folder / "config.json").write_text(json.dumps({"architectures": ["CVLFaceRecognitionModel"], "conf": conf}))
    (folder / "files.txt").write_text("README.md\npretrained_model/model.pt\npretrained_model/model.yaml\n")
    (folder / "wrapper.py").write_text("raise SystemExit('remote code must never run')\n")
    (folder / "pretrained_model").mkdir()
    (folder / "pretrained_model" / "model.pt").write_bytes(b"not a pickle: facezoo must not read this file")
    if yaml:
        lines = [f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {json.dumps(v)}" for k, v in conf.items()]
        (folder / "pretrained_model" / "model.yaml").write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def one_thread():
    """Small convs on a shared CPU: one thread is many times faster than an oversubscribed pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline_hub(monkeypatch, hf_offline_cache):
    """``offline_hub(repo, writer)``: add a repository to an offline Hugging Face cache this process reads."""
    import huggingface_hub.constants

    def add(repo: str, writer) -> Dict[str, str]:
        env = hf_offline_cache(repo, writer)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
        return env

    return add


def _assert_reproduces(model: nn.Module, net: nn.Module, bgr: bool) -> None:
    """facezoo(rgb) == the source network's own forward on its input (the channels flipped for a BGR source)."""
    model, net = model.eval().double(), net.eval().double()
    rgb = torch.randn(2, 3, 112, 112, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(rgb), net(rgb.flip(1) if bgr else rgb), rtol=1e-9, atol=1e-9)


# --- every tag loads by name and reproduces its source --------------------------------------------------------------

TAGS = [info.name for info in list_pretrained_info() if info.name.startswith("iresnet")]  # CVLface's IR tags


def test_the_tags_of_the_issue_are_registered_best_first():
    assert len(TAGS) == 11
    assert [timm.get_pretrained_cfg(a).tag for a in ("iresnet18", "iresnet50", "iresnet100")] == [
        "adaface_webface4m",
        "adaface_webface4m",
        "adaface_webface12m",
    ]
    for name in TAGS:
        info, cfg = pretrained_info(name), timm.get_pretrained_cfg(name)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.license) == (info.hub_id, "model.safetensors", "other")
        assert info.model_args == {"layout": "insightface" if "arcface" in name else "adaface"}


@pytest.mark.parametrize("name", TAGS)
def test_tag_loads_from_its_hub_repository_and_matches_the_source(offline_hub, name):
    info = pretrained_info(name)
    net = source_network(info.hub_id)
    bgr = info.hub_id in BGR_REPOS
    offline_hub(info.hub_id, lambda d: write_cvlface_repo(d, net, info.hub_id, "BGR" if bgr else "RGB"))
    model = timm.create_model(name, pretrained=True, widths=WIDTHS, embed_dim=EMBED)
    assert model.layout == info.model_args["layout"] and model.pretrained_cfg["tag"] == name.split(".")[1]
    _assert_reproduces(model, net, bgr)


def test_default_tag_and_facezoo_create_model(offline_hub):
    info = pretrained_info("iresnet50.adaface_webface4m")
    net = source_network(info.hub_id)
    offline_hub(info.hub_id, lambda d: write_cvlface_repo(d, net, info.hub_id, "RGB"))
    model = timm.create_model("iresnet50", pretrained=True, widths=WIDTHS, embed_dim=EMBED)  # the default tag
    assert model.layout == "adaface"
    _assert_reproduces(model, net, bgr=False)
    _assert_reproduces(create_model(info.name, pretrained=True, widths=WIDTHS, embed_dim=EMBED), net, bgr=False)


def test_a_downloaded_repository_loads_as_a_file(tmp_path):
    """The repository's files on disk: model.yaml beside model.safetensors gives the channel order."""
    repo = "minchul/cvlface_adaface_ir18_casia"
    net = source_network(repo)
    write_cvlface_repo(tmp_path, net, repo, "BGR")
    file = str(tmp_path / "model.safetensors")
    model = create_model("iresnet18", checkpoint=file, layout="adaface", widths=WIDTHS, embed_dim=EMBED)
    _assert_reproduces(model, net, bgr=True)
    (tmp_path / "pretrained_model" / "model.yaml").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: a CVLface .* no pretrained_model/model.yaml"):
        create_model("iresnet18", checkpoint=file, layout="adaface", widths=WIDTHS, embed_dim=EMBED)


def test_models_without_the_tags_weights_keep_the_plain_cfg():
    for model in (timm.create_model("iresnet100", device="meta"), timm.create_model("iresnet50", widths=WIDTHS)):
        assert model.layout == "insightface"
        assert model.pretrained_cfg.get("hf_hub_id") is None and "license" not in model.pretrained_cfg
    tagged = timm.create_model("iresnet100.adaface_ms1mv2", widths=WIDTHS, embed_dim=EMBED)
    assert tagged.layout == "adaface" and tagged.pretrained_cfg["hf_hub_id"] == "minchul/cvlface_adaface_ir101_ms1mv2"


# --- the channel order comes from the source, never guessed ---------------------------------------------------------


@pytest.mark.parametrize(
    "yaml, value, match",
    [(False, "RGB", r"no pretrained_model/model.yaml in this repository"), (True, "YUV", r"color_space 'YUV'")],
)
def test_channel_order_missing_or_odd_is_one_error_naming_the_repository(offline_hub, yaml, value, match):
    info = pretrained_info("iresnet18.adaface_vgg2")
    net = source_network(info.hub_id)
    offline_hub(info.hub_id, lambda d: write_cvlface_repo(d, net, info.hub_id, value, yaml=yaml))
    with pytest.raises((CheckpointError, HubError), match=rf"^minchul/cvlface_adaface_ir18_vgg2: .*{match}"):
        timm.create_model(info.name, pretrained=True, widths=WIDTHS, embed_dim=EMBED)


# --- no weights cached, no network ----------------------------------------------------------------------------------


def test_offline_with_nothing_cached_names_repository_and_file(offline_hub):
    offline_hub("someone/else", lambda d: (d / "x.txt").write_text("x"))  # an offline cache without the tag
    with pytest.raises(HubError) as err:
        timm.create_model("iresnet100", pretrained=True, widths=WIDTHS)
    text = str(err.value)
    assert text.startswith("minchul/cvlface_adaface_ir101_webface12m: model.safetensors") and "\n" not in text


def test_no_network_fails_within_seconds(monkeypatch, tmp_path, free_port):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(HubError, match=r"minchul/cvlface_adaface_ir18_webface4m: cannot reach the Hugging Face Hub"):
        create_model("iresnet18.adaface_webface4m", pretrained=True)
    assert time.perf_counter() - t0 < 5


def test_unknown_tag_lists_the_architectures_tags():
    with pytest.raises(UnknownNameError, match=r"did you mean 'iresnet100.adaface_webface12m'"):
        create_model("iresnet100.adaface_webface13m")
    with pytest.raises(UnknownNameError, match=r"iresnet34 has no pretrained weights"):
        timm.create_model("iresnet34.adaface_webface4m")


# --- what each tag is -----------------------------------------------------------------------------------------------


def test_facts_are_the_sources():
    info = pretrained_info("iresnet100.adaface_webface12m")
    assert info.dataset == "WebFace12M" and info.loss == "AdaFace" and info.license == "other"
    assert "non-commercial" in info.license_note and info.url == "https://huggingface.co/" + info.hub_id
    assert info.reported["LFW"] == 99.82 and info.reported["IJB-C@0.01"] == 97.72  # CVLface's board
    assert pretrained_info("iresnet18.adaface_casia").reported["IJB-B@0.01"] == 30.36


def test_models_pretrained_command(capsys):
    from facezoo.cli import main

    assert main(["models", "--pretrained", "iresnet18*"]) == 0
    out = capsys.readouterr().out
    assert out.count("| `iresnet18.") == 3 and "iresnet50" not in out and "as reported by each tag's source" in out
    assert main(["models", "--pretrained", "*webface4m", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {i.name for i in list_pretrained_info() if i.name.endswith("webface4m")}
    assert all(r["license"] == "other" and r["reported"]["LFW"] > 99 for r in rows)
    assert main(["models", "--pretrained", "swin*"]) == 2
    assert "error: no pretrained tag matches 'swin*'" in capsys.readouterr().err


def test_readme_table_is_the_commands_output():
    text = README.read_text()
    begin, end = "<!-- BEGIN facezoo models --pretrained -->\n", "<!-- END facezoo models --pretrained -->"
    assert begin in text and end in text, "README: the generated 'Pretrained models' block is missing"
    block = text[text.index(begin) + len(begin) : text.index(end)]
    assert block == pretrained_table_markdown(list_pretrained_info()), (
        "README's pretrained table is stale: paste `facezoo models --pretrained` between the markers"
    )


# --- tags where a model is named: training recipes, eval, export ----------------------------------------------------


def test_fine_tuning_from_a_tag_starts_from_its_weights_and_the_card_names_it(offline_hub, tmp_path):
    from facezoo.train import Trainer, load_recipe

    info = pretrained_info("iresnet18.adaface_webface4m")
    net = source_network(info.hub_id, map_area=4)  # 32x32 input: a 2x2 map
    offline_hub(info.hub_id, lambda d: write_cvlface_repo(d, net, info.hub_id, "BGR"))
    recipe = load_recipe(
        None,
        [
            "model.name=iresnet18",
            f"model.pretrained={info.name}",
            f"model.embed_dim={EMBED}",
            "model.args={widths: [8, 16, 32, 64], img_size: 32}",
            "data.synthetic.identities=8",
            "data.synthetic.images_per_identity=2",
            "data.batch_size=8",
            "data.num_workers=0",
            "train.epochs=1",
            "train.tensorboard=false",
            "export.enabled=true",
        ],
    )
    trainer = Trainer(recipe, tmp_path, progress=False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = trainer.backbone.eval()(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, net(x.flip(1)), rtol=1e-4, atol=1e-4)  # the tag's weights, RGB in
    trainer.backbone.train()
    trainer.fit()
    card = (tmp_path / "export" / "README.md").read_text()
    assert info.name in card
    with pytest.raises(Exception, match=r"holds weights of iresnet18, but model.name is 'iresnet50'"):
        Trainer(load_recipe(None, ["model.name=iresnet50", f"model.pretrained={info.name}"]), tmp_path / "b")


def test_eval_takes_a_tag(offline_hub, tmp_path, make_bins, capsys, monkeypatch):
    """``facezoo eval TAG``: the tag's weights (a full-width IR-18, as published), no --pretrained needed."""
    from facezoo.cli import main

    info = pretrained_info("iresnet18.adaface_casia")
    net = source_network(info.hub_id, widths=(64, 128, 256, 512), embed=512)
    offline_hub(info.hub_id, lambda d: write_cvlface_repo(d, net, info.hub_id, "RGB"))
    bins = make_bins(tmp_path / "bins", bins=("lfw",), pairs_datasets=(), num_pairs=4)
    argv = ["eval", info.name, "--bins", str(bins), "--nfolds", "2", "--device", "cpu", "--quiet"]
    assert main(argv + ["--output-dir", str(tmp_path / "ev")]) == 0
    assert "randomly initialized" not in capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["model"] == info.name
