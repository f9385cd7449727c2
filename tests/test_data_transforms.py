"""Face transforms from a pretrained cfg, flip and the AdaFace augmentations."""

from __future__ import annotations

import pickle

import pytest
import torch

from facezoo.data.transforms import FaceTransform, create_face_transform


def _img(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_eval_transform_normalizes_from_cfg():
    x = _img()
    t = create_face_transform({"input_size": (3, 112, 112), "mean": (0.5,) * 3, "std": (0.5,) * 3}, is_training=False)
    assert torch.allclose(t(x), (x.float() / 255 - 0.5) / 0.5, atol=1e-6)
    assert torch.allclose(create_face_transform(None)(x), t(x))
    imagenet = create_face_transform(
        {"input_size": (3, 112, 112), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    )
    assert torch.allclose(imagenet(x)[1], (x[1].float() / 255 - 0.456) / 0.224, atol=1e-5)
    assert create_face_transform(None, input_size=(3, 96, 96))(x).shape == (3, 96, 96)
    with pytest.raises(TypeError):
        create_face_transform(None, bogus=1)


def test_from_a_timm_model():
    timm = pytest.importorskip("timm")
    import facezoo  # noqa: F401  (registers the models)

    model = timm.create_model("iresnet18_gap")
    t = create_face_transform(model, is_training=False)
    assert t.size == (112, 112)
    x = _img()
    assert torch.allclose(t(x), (x.float() / 255 - 0.5) / 0.5, atol=1e-6)


def test_training_flip_probability():
    x = _img(1)
    t = create_face_transform(None, is_training=True, flip_prob=0.5)
    torch.manual_seed(0)
    outs = [t(x) for _ in range(200)]
    plain, flipped = (x.float() / 255 - 0.5) / 0.5, (x.flip(-1).float() / 255 - 0.5) / 0.5
    n_flip = sum(torch.allclose(o, flipped, atol=1e-5) for o in outs)
    assert all(torch.allclose(o, plain, atol=1e-5) or torch.allclose(o, flipped, atol=1e-5) for o in outs)
    assert 70 < n_flip < 130
    assert create_face_transform(None, is_training=False, flip_prob=1.0).flip_prob == 0.0


def test_adaface_augmentations():
    x = _img(2)
    torch.manual_seed(1)
    crop = FaceTransform.crop_and_pad(x)
    kept = (crop != 0).any(0)
    rows, cols = kept.any(1).nonzero(), kept.any(0).nonzero()
    # a rectangle of the original kept in place, zeros elsewhere
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert torch.equal(crop[:, r0:r1, c0:c1], x[:, r0:r1, c0:c1])
    assert (crop.sum() < x.sum()) and crop.shape == x.shape
    low = FaceTransform.low_resolution(x)
    assert low.shape == x.shape and low.dtype == torch.uint8
    smooth = torch.zeros(20)
    for k in range(20):
        smooth[k] = FaceTransform.low_resolution(x).float().diff(dim=-1).abs().mean()
    assert smooth.mean() < x.float().diff(dim=-1).abs().mean()  # lower resolution = less high-frequency energy
    t = create_face_transform(None, is_training=True, flip_prob=0.0, photometric_prob=1.0)
    y = t(x)
    assert y.shape == (3, 112, 112) and y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, (x.float() / 255 - 0.5) / 0.5)
    full = create_face_transform(None, is_training=True, crop_prob=1, low_res_prob=1, photometric_prob=1)
    assert full(x).shape == (3, 112, 112)
    assert pickle.loads(pickle.dumps(full)).crop_prob == 1  # picklable for DataLoader workers
    with pytest.raises(ValueError, match="crop_prob"):
        create_face_transform(None, is_training=True, crop_prob=1.5)
