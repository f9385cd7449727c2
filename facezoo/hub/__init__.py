"""Publishing facezoo models: export folders with model cards, pushes to the Hugging Face Hub.

* :func:`save_pretrained` -- ``model.safetensors`` + timm's ``config.json`` + ``README.md`` (the model card, with
  metrics from ``facezoo eval``), written atomically; loads back with ``timm.create_model('local-dir:DIR')``.
* :func:`render_model_card` -- the card alone, a ``huggingface_hub.ModelCard``.
* :func:`push` -- one export folder, a training run's ``export/`` or a folder of runs to Hub repos (and a
  collection), or a dry run that writes what would be uploaded and contacts nothing.
"""

from facezoo.hub.card import render_model_card
from facezoo.hub.export import check_export_folder, save_pretrained
from facezoo.hub.push import push
from facezoo.hub.results import load_results

__all__ = ["save_pretrained", "render_model_card", "push", "check_export_folder", "load_results"]
