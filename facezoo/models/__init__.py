"""Face backbones registered with timm on import."""
from facezoo.models.iresnet import DEPTHS, HEADS, IResNet, checkpoint_filter_fn, describe_state_dict, model_names

__all__ = ["IResNet", "DEPTHS", "HEADS", "model_names", "checkpoint_filter_fn", "describe_state_dict"]
