"""Training on Accelerate: recipes (typed YAML), the engine, checkpoints with exact and elastic resume.

    from facezoo.train import load_recipe, train
    train(load_recipe("recipes/quickstart.yaml", ["train.max_steps=100"]), "runs/q")

The command line is ``facezoo train RECIPE [--output-dir DIR] [--resume latest|PATH] [key=value ...]``.
"""

from facezoo.train.config import Recipe, apply_overrides, load_recipe, recipe_from_dict, recipe_keys, save_recipe
from facezoo.train.engine import Trainer, TrainingError, TrainingInterrupted, train

__all__ = [
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "apply_overrides",
    "recipe_keys",
    "save_recipe",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "train",
]
