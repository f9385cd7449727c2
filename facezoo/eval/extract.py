"""Embedding extraction with flip test-time augmentation, in batches, on CPU, one GPU or many (accelerate).

Images are uint8 RGB (N, 3, H, W) tensors or datasets of such items. They are scaled to [0, 1], resized to the
model's input size when it differs, and normalized with the model's mean/std (``timm.data.resolve_data_config``;
(0.5, 0.5, 0.5) for facezoo models, i.e. ``(x/255 - 0.5) / 0.5`` as insightface). The flip is horizontal.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

Images = Union[torch.Tensor, np.ndarray, Dataset]


def model_preprocessing(model: torch.nn.Module) -> Tuple[Tuple[int, int], torch.Tensor, torch.Tensor]:
    """(input H, W), mean and std (3,) of a timm model, from its pretrained config (defaults: 112, 0.5, 0.5)."""
    try:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        size = tuple(int(v) for v in cfg["input_size"][1:])
        mean, std = cfg["mean"], cfg["std"]
    except Exception:  # not a timm model: the face-recognition convention
        size, mean, std = (112, 112), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
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


def _shard(n: int, rank: int, world: int) -> Tuple[int, int]:
    """Contiguous shard of ``n`` items for ``rank`` (the first ``n % world`` ranks hold one extra)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: Images, batch_size: int = 128,
                     device: Union[str, torch.device, None] = None, flip: bool = True,
                     accelerator: Any = None, num_workers: int = 0, progress: bool = True,
                     desc: str = "extract") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Raw model outputs ``f(img)`` and (``flip``) ``f(flip(img))``, float32 (N, D) on the CPU, in input order.

    With an ``accelerate.Accelerator`` running several processes, each process embeds a contiguous shard on its
    device and the shards are gathered, so every process returns the full arrays. The model is put in eval mode
    (and restored afterwards).
    """
    dataset = _as_dataset(images)
    n = len(dataset)  # type: ignore[arg-type]
    rank, world = 0, 1
    if accelerator is not None:
        rank, world = accelerator.process_index, accelerator.num_processes
        device = accelerator.device
        if n < world:  # too few items to give every process a shard: each embeds everything
            rank, world = 0, 1
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    start, stop = _shard(n, rank, world)
    part = Subset(dataset, range(start, stop)) if world > 1 else dataset
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)
    size, mean, std = model_preprocessing(model)
    mean, std = mean.to(device).view(1, 3, 1, 1), std.to(device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    outs, flips = [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress or rank != 0):
            x = batch.to(device, non_blocking=True).float().div_(255)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = (x - mean) / std
            for inp, store in ((x, outs), (x.flip(3), flips)) if flip else ((x, outs),):
                y = model(inp)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                if y.ndim != 2:
                    raise ValueError(f"model output has shape {tuple(y.shape)}, expected 2-D (batch, embedding); "
                                     "create the model with num_classes=0 or a head that pools to a vector")
                store.append(y.float().cpu())
    finally:
        model.train(was_training)
    dim = outs[0].shape[1] if outs else 0
    feats = torch.cat(outs) if outs else torch.zeros(0, dim)
    flip_feats = (torch.cat(flips) if flips else torch.zeros(0, dim)) if flip else None
    if world > 1:
        feats = _gather(accelerator, feats, n, world)
        flip_feats = _gather(accelerator, flip_feats, n, world) if flip else None
    return feats, flip_feats


def _gather(accelerator: Any, x: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """All-gather contiguous shards of unequal length (padded to the longest), back to the (n, D) array."""
    longest = _shard(n, 0, world)[1]
    pad = torch.zeros(longest, x.shape[1], dtype=x.dtype)
    pad[: x.shape[0]] = x
    allx = accelerator.gather(pad.to(accelerator.device)).cpu().view(world, longest, -1)
    return torch.cat([allx[r, : _shard(n, r, world)[1] - _shard(n, r, world)[0]] for r in range(world)])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization as ``sklearn.preprocessing.normalize`` (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def fuse_embeddings(feats: torch.Tensor, flip_feats: Optional[torch.Tensor]) -> np.ndarray:
    """Verification embeddings as insightface: ``f(img) + f(flip)`` summed in float64, then L2-normalized."""
    emb = feats.numpy().astype(np.float64)
    if flip_feats is not None:
        emb = emb + flip_feats.numpy().astype(np.float64)
    return l2_normalize(emb)


def extract_embeddings(model: torch.nn.Module, images: Images, batch_size: int = 128,
                       device: Union[str, torch.device, None] = None, flip: bool = True, **kwargs: Any) -> np.ndarray:
    """L2-normalized, flip-fused embeddings (N, D) float64, ready for :func:`facezoo.eval.verification.evaluate`.

    ``kwargs`` go to :func:`extract_features` (``accelerator``, ``num_workers``, ``progress``, ``desc``).
    """
    feats, flip_feats = extract_features(model, images, batch_size, device, flip=flip, **kwargs)
    return fuse_embeddings(feats, flip_feats)
