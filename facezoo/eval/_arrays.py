"""Small helpers to accept numpy arrays, torch tensors or sequences interchangeably."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

try:  # torch is a hard dependency of facezoo, but the protocol code itself only needs numpy
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

ArrayLike = Union[np.ndarray, "torch.Tensor", Any]


def to_numpy(x: ArrayLike, dtype: Optional[Any] = None) -> np.ndarray:
    """``x`` as a numpy array (torch tensors are detached and moved to the CPU), optionally cast to ``dtype``."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization as ``sklearn.preprocessing.normalize`` (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]
