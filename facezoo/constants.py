"""The face-recognition input convention, defined once: aligned 112x112 RGB, ``(x / 255 - 0.5) / 0.5``.

insightface, the GWP authors and AdaFace all normalize this way; facezoo's pretrained cfgs, transforms, evaluation
and exported models (ONNX, Hub cards) read these constants.
"""

from __future__ import annotations

FACE_INPUT_SIZE = (3, 112, 112)
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)
FACE_INTERPOLATION = "bilinear"
EMBED_DIM = 512  # the field's embedding size

__all__ = ["FACE_INPUT_SIZE", "FACE_MEAN", "FACE_STD", "FACE_INTERPOLATION", "EMBED_DIM"]
