"""Face data: training sources, verification sets, IJB, alignment and transforms; no mxnet needed."""

from __future__ import annotations

from facezoo.data.align import ARCFACE_TEMPLATE, align_face, estimate_similarity
from facezoo.data.collate import collate_faces
from facezoo.data.describe import describe_source
from facezoo.data.ijb import IJBAlignedImages, IJBMeta, read_ijb
from facezoo.data.image import decode_rgb, encode_image
from facezoo.data.sources import (
    FaceDataset,
    HFFaces,
    HFIterableFaces,
    ImageFolderFaces,
    RecordIOFaces,
    SkipCounter,
    count_skipped,
    create_face_source,
    restore_skipped,
)
from facezoo.data.synthetic import SyntheticFaces, synthetic_pairs
from facezoo.data.transforms import create_face_transform
from facezoo.data.verification import UnsafePickleError, load_bin, load_pairs_dataset, write_bin, write_pairs_dataset
from facezoo.errors import DataError

__all__ = [
    "ARCFACE_TEMPLATE",
    "align_face",
    "estimate_similarity",
    "collate_faces",
    "describe_source",
    "IJBAlignedImages",
    "IJBMeta",
    "read_ijb",
    "DataError",
    "decode_rgb",
    "encode_image",
    "FaceDataset",
    "HFFaces",
    "HFIterableFaces",
    "ImageFolderFaces",
    "RecordIOFaces",
    "SkipCounter",
    "count_skipped",
    "create_face_source",
    "restore_skipped",
    "SyntheticFaces",
    "synthetic_pairs",
    "create_face_transform",
    "UnsafePickleError",
    "load_bin",
    "load_pairs_dataset",
    "write_bin",
    "write_pairs_dataset",
]
