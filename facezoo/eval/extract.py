"""Embedding extraction with flip test-time augmentation, in batches, on CPU, one GPU or many (accelerate).

Images are uint8 RGB (N, 3, H, W) tensors or datasets of such items. They are scaled to [0, 1], resized to the
model's input size when it differs, and normalized with the model's mean/std (``timm.data.resolve_data_config``;
(0.5, 0.5, 0.5) for facezoo models, i.e. ``(x/255 - 0.5) / 0.5`` as insightface). The flip is horizontal.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from facezoo.constants import FACE_INPUT_SIZE, FACE_MEAN, FACE_STD
from facezoo.data.image import resize_faces
from facezoo.eval._arrays import l2_normalize

Images = Union[torch.Tensor, np.ndarray, Dataset]


def model_preprocessing(model: torch.nn.Module) -> Tuple[Tuple[int, int], torch.Tensor, torch.Tensor]:
    """(input H, W), mean and std (3,) of a timm model, from its pretrained config; a module without one (not a
    timm model) gets the face-recognition convention: 112x112, mean = std = 0.5 (timm's own fallback would be
    ImageNet's 224x224 and statistics)."""
    size, mean, std = FACE_INPUT_SIZE[1:], FACE_MEAN, FACE_STD
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        try:
            from timm.data import resolve_data_config

            cfg = resolve_data_config({}, model=model)
            size = tuple(int(v) for v in cfg["input_size"][1:])
            mean, std = cfg["mean"], cfg["std"]
        except Exception:  # an odd config: keep the face-recognition convention
            pass
    return size, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)  # type: ignore


def _as_dataset(images: Images) -> Dataset:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8 RGB, got shape {tuple(images.shape)}")
        return TensorDataset(images)
    return images


def _collate(batch: Sequence[Any]) -> torch.Tensor:
    items = [b[0] if isinstance(b, (tuple, list)) else b for b in batch]
    return torch.stack([torch.as_tensor(x) for x in items])


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images: Images,
    batch_size: int = 128,
    device: Union[str, torch.device, None] = None,
    flip: bool = True,
    accelerator: Any = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "extract",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Raw model outputs ``f(img)`` and (``flip``) ``f(flip(img))``, float32 (N, D) on the CPU, in input order.

    With an ``accelerate.Accelerator`` running several processes, each process embeds its contiguous part of the
    items (``accelerator.split_between_processes``, padded to equal length) on its device and the parts are
    gathered (``accelerator.gather``) with their item indices, so every process returns the full arrays in input
    order. The model is put in eval mode (and restored afterwards).
    """
    dataset = _as_dataset(images)
    n = len(dataset)  # type: ignore[arg-type]
    world = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        device = accelerator.device
    if n < world:  # too few items to give every process one: each embeds everything
        world = 1
    indices = list(range(n))
    if world > 1:
        with accelerator.split_between_processes(indices, apply_padding=True) as mine:
            indices = list(mine)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    rank = accelerator.process_index if world > 1 else 0
    part = Subset(dataset, indices) if world > 1 else dataset
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)
    size, mean, std = model_preprocessing(model)
    mean, std = mean.to(device).view(1, 3, 1, 1), std.to(device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    outs, flips = [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress or rank != 0):
            x = resize_faces(batch.to(device, non_blocking=True), size).float().div_(255)  # as training resizes
            x = (x - mean) / std
            for inp, store in ((x, outs), (x.flip(3), flips)) if flip else ((x, outs),):
                y = model(inp)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                if y.ndim != 2:
                    raise ValueError(
                        f"model output has shape {tuple(y.shape)}, expected 2-D (batch, embedding); "
                        "create the model with num_classes=0 or a head that pools to a vector"
                    )
                store.append(y.float().cpu())
    finally:
        model.train(was_training)
    dim = outs[0].shape[1] if outs else 0
    feats = torch.cat(outs) if outs else torch.zeros(0, dim)
    flip_feats = (torch.cat(flips) if flips else torch.zeros(0, dim)) if flip else None
    if world > 1:
        feats = _gather(accelerator, feats, indices, n)
        flip_feats = _gather(accelerator, flip_feats, indices, n) if flip else None
    return feats, flip_feats


def _gather(accelerator: Any, x: torch.Tensor, indices: Sequence[int], n: int) -> torch.Tensor:
    """Every process's rows (equal counts: ``split_between_processes`` padded them) back to the (n, D) array,
    placed by their item indices (a padded repeat lands on its own row again)."""
    rows = accelerator.gather(torch.as_tensor(indices, dtype=torch.long, device=accelerator.device)).cpu()
    allx = accelerator.gather(x.to(accelerator.device)).cpu()
    out = torch.empty(n, x.shape[1], dtype=x.dtype)
    out[rows] = allx
    return out


def fuse_embeddings(feats: torch.Tensor, flip_feats: Optional[torch.Tensor]) -> np.ndarray:
    """Verification embeddings as insightface: ``f(img) + f(flip)`` summed in float64, then L2-normalized."""
    emb = feats.numpy().astype(np.float64)
    if flip_feats is not None:
        emb = emb + flip_feats.numpy().astype(np.float64)
    return l2_normalize(emb)


def extract_embeddings(
    model: torch.nn.Module,
    images: Images,
    batch_size: int = 128,
    device: Union[str, torch.device, None] = None,
    flip: bool = True,
    **kwargs: Any,
) -> np.ndarray:
    """L2-normalized, flip-fused embeddings (N, D) float64, ready for :func:`facezoo.eval.verification.evaluate`.

    ``kwargs`` go to :func:`extract_features` (``accelerator``, ``num_workers``, ``progress``, ``desc``).
    """
    feats, flip_feats = extract_features(model, images, batch_size, device, flip=flip, **kwargs)
    return fuse_embeddings(feats, flip_feats)
