"""Packages for setuptools; everything else is in pyproject.toml.

The model-card templates live in the top-level ``hub_cards/`` folder (the product layout) and ship inside the wheel
as the package ``facezoo.hub_cards``: pyproject's ``packages.find`` cannot add a package from outside ``facezoo/``,
so the package list is computed here.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["facezoo", "facezoo.*"]) + ["facezoo.hub_cards"],
    package_dir={"facezoo.hub_cards": "hub_cards"},
    package_data={"facezoo.hub_cards": ["*.md"]},
)
