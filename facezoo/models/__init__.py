"""Face backbones registered with timm on import, and the helpers to create and load them."""

from facezoo.models import edgeface  # noqa: F401  (registers the EdgeFace models)
from facezoo.models.checkpoints import convert_checkpoint, describe_state_dict, load_weights_only
from facezoo.models.factory import create_model
from facezoo.models.families import face_facts, face_model_names, is_face_model
from facezoo.models.iresnet import DEPTHS, HEADS, LAYOUTS, IResNet, checkpoint_filter_fn, model_names
from facezoo.models.mobilefacenet import MobileFaceNet
from facezoo.models.vitface import VisionTransformerFace

__all__ = [
    "IResNet",
    "MobileFaceNet",
    "VisionTransformerFace",
    "DEPTHS",
    "HEADS",
    "LAYOUTS",
    "model_names",
    "checkpoint_filter_fn",
    "describe_state_dict",
    "create_model",
    "face_model_names",
    "face_facts",
    "is_face_model",
    "convert_checkpoint",
    "load_weights_only",
]
