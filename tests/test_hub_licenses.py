"""The license a model card states (``facezoo.hub.licenses``): never a default the exporter did not choose."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from hub_helpers import small_model
from huggingface_hub import ModelCard

from facezoo.cli import main
from facezoo.hub import render_model_card, save_pretrained
from facezoo.hub.licenses import DATASET_TERMS, base_model_info, dataset_terms, resolve_license
from facezoo.models import pretrained
from facezoo.models.pretrained import PretrainedInfo, register_pretrained
from facezoo.train.config import recipe_from_dict

_SYNTHETIC_RECIPE = {
    "model": {"name": "iresnet18"},
    "data": {"train": "synthetic", "synthetic": {"identities": 37, "images_per_identity": 5, "seed": 11}},
}


@pytest.fixture
def base_tag(monkeypatch):
    """A pretrained tag registered for the test only (the registry is restored afterwards)."""
    monkeypatch.setattr(pretrained, "_REGISTRY", dict(pretrained._REGISTRY))
    info = PretrainedInfo(
        name="iresnet18.test_webface4m",
        hub_id="some-org/ir18_webface4m",
        filename="model.safetensors",
        dataset="WebFace4M",
        loss="ArcFace",
        license="other",
        license_note="weights follow WebFace's terms: non-commercial research only",
        source="a test",
        url="https://huggingface.co/some-org/ir18_webface4m",
    )
    register_pretrained(info)
    return info


def _card(model=None, **kwargs) -> ModelCard:
    return render_model_card(model if model is not None else small_model("iresnet18_gap"), **kwargs)


# --- the rules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, canonical, license_name",
    [
        ("WebFace4M", "WebFace4M", "webface260m-terms"),
        ("webface42m", "WebFace42M", "webface260m-terms"),
        ("wf12m", "WebFace12M", "webface260m-terms"),
        ("WebFace260M", "WebFace260M", "webface260m-terms"),
        ("faces_emore", "MS1MV2", "ms-celeb-1m-terms"),
        ("ms1m-retinaface-t1", "MS1MV3", "ms-celeb-1m-terms"),
        ("MS1M", "MS1M", "ms-celeb-1m-terms"),
        ("glint360k", "Glint360K", "glint360k-terms"),
        ("CASIA-WebFace", "CASIA-WebFace", "casia-webface-terms"),
        ("vgg2", "VGGFace2", "vggface2-terms"),
    ],
)
def test_face_datasets_give_other_with_their_terms(name, canonical, license_name):
    assert dataset_terms(name) is DATASET_TERMS[canonical]
    card = resolve_license(datasets=[name])
    assert (card.license, card.license_name) == ("other", license_name)
    assert card.statement.startswith("**Non-commercial research only.**")
    assert f"- {canonical}: " in card.statement and "non-commercial research only" in card.statement
    assert card.warnings == ()


def test_synthetic_faces_carry_the_project_license():
    recipe = recipe_from_dict(_SYNTHETIC_RECIPE).model_dump(mode="json")  # what the engine's export passes
    card = resolve_license(training=recipe)
    assert (card.license, card.license_name, card.warnings) == ("apache-2.0", None, ())
    assert "facezoo synthetic faces" in card.statement
    assert resolve_license(datasets=["synthetic"]).license == "apache-2.0"


def test_an_explicit_license_wins_and_warns_about_stricter_data():
    card = resolve_license("cc-by-nc-4.0", datasets=["WebFace4M"])
    assert (card.license, card.license_name) == ("cc-by-nc-4.0", None)
    assert "as chosen by the exporter" in card.statement
    assert len(card.warnings) == 1 and "WebFace4M" in card.warnings[0] and "cc-by-nc-4.0" in card.warnings[0]
    assert resolve_license("mit", training=recipe_from_dict(_SYNTHETIC_RECIPE).model_dump()).warnings == ()
    assert resolve_license("other", datasets=["glint360k"]).license_name == "glint360k-terms"


def test_unknown_dataset_is_other_with_a_warning():
    card = resolve_license(datasets=["my_faces"])
    assert (card.license, card.license_name) == ("other", "training-data-terms")
    assert "dataset my_faces: terms not known to facezoo" in card.statement
    assert len(card.warnings) == 1 and "my_faces" in card.warnings[0] and "--license" in card.warnings[0]
    mixed = resolve_license(datasets=["WebFace4M", "my_faces"])
    assert mixed.license_name == "webface260m-terms-and-training-data-terms" and "Non-commercial" in mixed.statement


def test_nothing_known_is_other_not_stated_with_a_warning():
    for training in (None, {"margin": "arcface", "epochs": 20}):  # a recipe without a data section says nothing
        card = resolve_license(training=training)
        assert (card.license, card.license_name) == ("other", "not-stated")
        assert "License not stated" in card.statement and len(card.warnings) == 1


def test_dataset_read_from_the_training_path_when_not_named():
    card = resolve_license(training={"data": {"train": "/data/faces_emore/train.rec"}})
    assert (card.license, card.license_name) == ("other", "ms-celeb-1m-terms")
    assert "taken to be MS1MV2 from its path" in card.warnings[0]
    unknown = resolve_license(training={"data": {"train": "/data/my_faces"}})
    assert unknown.license == "other" and "/data/my_faces" in unknown.warnings[0]
    named = resolve_license(datasets=["synthetic"], training={"data": {"train": "/data/faces_emore"}})
    assert named.license == "apache-2.0"  # the named datasets win over the path


def test_base_model_tag_carries_its_license(base_tag):
    for ref in ("iresnet18.test_webface4m", "timm/iresnet18.test_webface4m", "hf-hub:some-org/ir18_webface4m"):
        assert base_model_info(ref) is base_tag
    assert base_model_info("hf-hub:other-org/x") is None and base_model_info(None) is None
    synthetic = recipe_from_dict(_SYNTHETIC_RECIPE).model_dump()
    card = resolve_license(training=synthetic, base_model="iresnet18.test_webface4m")
    assert (card.license, card.license_name) == ("other", "test-webface4m-terms")  # synthetic fine-tune: base wins
    assert "base model `iresnet18.test_webface4m`: weights follow WebFace's terms" in card.statement
    assert resolve_license("apache-2.0", training=synthetic, base_model="iresnet18.test_webface4m").warnings


def test_unregistered_base_model_is_other_with_a_warning():
    card = resolve_license(training=recipe_from_dict(_SYNTHETIC_RECIPE).model_dump(), base_model="hf-hub:a/b")
    assert card.license == "other" and "base model `hf-hub:a/b`" in card.warnings[0]


# --- cards, export and the CLI --------------------------------------------------------------------------------------


def test_card_front_matter_and_body_for_a_face_dataset(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        out = save_pretrained(small_model("iresnet18_gap"), tmp_path / "pub", datasets=["WebFace4M"])
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "other" and card.data.license_name == "webface260m-terms"
    assert "license: other\nlicense_name: webface260m-terms\n" in text.split("---\n")[1]
    assert "## License\n\n**Non-commercial research only.**" in card.text
    assert "| license | other (webface260m-terms) |" in card.text and "| training data | WebFace4M |" in card.text
    assert "mit" not in text.split("---\n")[1] and caplog.text == ""


def test_card_names_the_synthetic_training_data(tmp_path):
    recipe = recipe_from_dict(_SYNTHETIC_RECIPE).model_dump(mode="json")
    card = _card(training=recipe)
    assert card.data.license == "apache-2.0" and card.data.get("license_name") is None
    row = "| training data | facezoo synthetic faces (`data.train: synthetic`): 37 identities, 5 images per identity, "
    assert row + "seed 11, difficulty 1.0 |" in card.text
    assert "not recorded" not in card.text


def test_unknown_dataset_warns_at_export(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="facezoo.hub"):
        save_pretrained(small_model("iresnet18_gap"), tmp_path / "pub", datasets=["my_faces"])
    assert "facezoo does not know the terms of dataset my_faces" in caplog.text
    assert ModelCard.load(tmp_path / "pub" / "README.md").data.license == "other"


def test_fine_tune_card_names_the_base_tag(base_tag):
    card = _card(base_model="iresnet18.test_webface4m", datasets=["synthetic"])
    assert card.data.base_model == "some-org/ir18_webface4m"  # the tag's Hub repository
    assert card.data.license == "other" and card.data.license_name == "test-webface4m-terms"
    assert "Fine-tuned from [`iresnet18.test_webface4m`](https://huggingface.co/some-org/ir18_webface4m)" in card.text
    assert _card(base_model="iresnet18.test_webface4m", license="cc-by-nc-4.0").data.license == "cc-by-nc-4.0"


def test_cli_without_dataset_says_not_stated(tmp_path, caplog):
    model = small_model("iresnet18_gap")
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    args = ["export", "hub", "iresnet18_gap", "--checkpoint", str(tmp_path / "backbone.pth")]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--output", str(tmp_path / "a")]) == 0
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert (card.data.license, card.data.license_name) == ("other", "not-stated")
    assert "no license and no training data named" in caplog.text
    assert main([*args, "--output", str(tmp_path / "b"), "--license", "apache-2.0"]) == 0
    card = ModelCard.load(tmp_path / "b" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.get("license_name") is None
    (tmp_path / "recipe.yaml").write_text("data:\n  train: synthetic\n  synthetic: {identities: 8, seed: 3}\n")
    assert main([*args, "--output", str(tmp_path / "c"), "--training", str(tmp_path / "recipe.yaml")]) == 0
    card = ModelCard.load(tmp_path / "c" / "README.md")
    assert card.data.license == "apache-2.0" and "8 identities, seed 3" in card.text


def test_random_init_pretrained_cfg_claims_no_license():
    assert "license" not in timm.create_model("iresnet18", pretrained=False).pretrained_cfg


@pytest.mark.parametrize(
    "name", ["iresnet18_gwp", "iresnet50", "mobilefacenet_gwp", "vitface_t_gwp", "vitface_b_p8", "edgeface_xxs"]
)
def test_no_family_claims_a_license_for_weights_it_does_not_have(name):
    """A model built without a tag's weights has no license in its pretrained cfg (random weights have none)."""
    assert timm.create_model(name, device="meta").pretrained_cfg.get("license") is None
