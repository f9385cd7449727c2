#!/usr/bin/env bash
# Run timm's OWN model test file (tests/test_models.py from the installed timm version's source distribution)
# against facezoo's models. .ci/run calls it with no arguments; it downloads the timm sdist from PyPI into a
# temporary folder (set TIMM_SDIST=path/to/timm-X.Y.Z.tar.gz to use a downloaded one).
#
#   bash scripts/run_timm_upstream_tests.sh                       # the representative set (below)
#   bash scripts/run_timm_upstream_tests.sh iresnet100_gwp 'iresnet34*'   # exact names or shell patterns
#
# The representative set covers every IResNet head (flatten, gap, gwp, gdc) and both stems (3x3, 7x7) at depth 18, one
# deeper model, and the other families' GDC / GWP / flatten models: iresnet18 iresnet18_k7 iresnet18_gap
# iresnet18_gwp iresnet18_gdc iresnet50_gwp_k7 mobilefacenet mobilefacenet_gwp vitface_t vitface_t_gwp. timm's test
# functions that collect them (all are run): test_model_forward, test_model_backward, test_model_default_cfgs,
# test_model_forward_features, test_model_forward_torchscript, test_model_forward_fx, test_model_backward_fx,
# test_model_forward_fx_torchscript; not the two that download pretrained weights (see below).
set -euo pipefail
start=$SECONDS
python=${PYTHON:-python3}
if [ "$#" -eq 0 ]; then
    set -- iresnet18 iresnet18_k7 iresnet18_gap iresnet18_gwp iresnet18_gdc iresnet50_gwp_k7 mobilefacenet mobilefacenet_gwp \
        vitface_t vitface_t_gwp
fi
# pytest -k matches substrings (iresnet18 would also select iresnet18_gap_k7): build an expression that selects
# exactly the named models
filter=$("$python" - "$@" <<'EOF'
import fnmatch
import sys

from facezoo.models.families import face_model_names

names = face_model_names()
chosen = [n for pattern in sys.argv[1:] for n in names if fnmatch.fnmatchcase(n, pattern)]
unknown = [p for p in sys.argv[1:] if not any(fnmatch.fnmatchcase(n, p) for n in names)]
if unknown:
    sys.exit(f"run_timm_upstream_tests.sh: no facezoo model matches {unknown}; 'facezoo models' lists them")
terms = []
for n in dict.fromkeys(chosen):
    longer = [o for o in names if o != n and n in o]
    terms.append("(" + " and not ".join([n, *longer]) + ")")
# timm's two pretrained tests download each tag's weights from the Hub (no network in CI; facezoo's own offline
# tests load every tag from a Hub cache laid out as its repository)
print("(" + " or ".join(terms) + ") and not test_model_load_pretrained and not test_model_features_pretrained")
EOF
)
version=$("$python" -c "import timm; print(timm.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sdist=${TIMM_SDIST:-}
if [ -z "$sdist" ]; then
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: "timm==${version}" \
        -d "$work"
    sdist="$work/timm-${version}.tar.gz"
fi
tar -xzf "$sdist" -C "$work"
echo "timm ${version} tests/test_models.py on: $*"
cd "$work/timm-${version}"
# -p facezoo imports facezoo before collection, so timm's list_models() sees the face models
"$python" -m pytest tests/test_models.py -p facezoo -p no:cacheprovider -q -k "$filter"
echo "timm upstream tests: $((SECONDS - start)) s"
