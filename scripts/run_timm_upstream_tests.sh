#!/usr/bin/env bash
# Run timm's OWN model test file (tests/test_models.py from the installed timm version's source distribution)
# against facezoo's models. Downloads the timm sdist from PyPI into a temporary folder; not part of CI.
#   bash scripts/run_timm_upstream_tests.sh                 # the depth-18 models
#   bash scripts/run_timm_upstream_tests.sh "iresnet50_gwp"  # any pytest -k expression
set -euo pipefail
filter="${1:-iresnet18}"
version=$(python3 -c "import timm; print(timm.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: "timm==${version}" -d "$work"
tar -xzf "$work"/timm-"${version}".tar.gz -C "$work"
cd "$work/timm-${version}"
# -p facezoo imports facezoo before collection, so timm's list_models() sees the face models
python3 -m pytest tests/test_models.py -p facezoo -p no:cacheprovider -q -k "$filter"
