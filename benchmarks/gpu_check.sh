#!/usr/bin/env bash
# One command for the first time a GPU is at hand: a CUDA smoke run of the engine, evaluation and ONNX export of the
# GPU-trained model, and the training throughput benchmark (bench_train.py) against its 8,000 img/s target.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: about 5-8 minutes on one H200
#   bash benchmarks/gpu_check.sh --cpu      # CI: the CUDA-only checks print SKIP, the rest runs on CPU at tiny sizes
#   bash benchmarks/gpu_check.sh --keep DIR # keep the runs and logs in DIR (default: a temporary folder, removed)
#   bash benchmarks/gpu_check.sh --only cuda,synth_data,bench_train   # some checks (later ones may need earlier)
#
# One line per check: name, PASS / FAIL / SKIP, its key number. A failed check's log is printed under its line.
# The exit status is 1 when any check that ran failed. Environment: PYTHON (default python3), GPU_CHECK_BENCH_ARGS
# (extra bench_train.py options on CUDA, e.g. "--batch 256").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
MODE=cuda
KEEP=""
ONLY=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --cpu) MODE=cpu ;;
        --keep) KEEP=${2:?--keep needs a folder}; shift ;;
        --only) ONLY=",${2:?--only needs check names},"; shift ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n $KEEP ]]; then
    mkdir -p "$KEEP"
    WORK=$(cd "$KEEP" && pwd)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/facezoo_gpu_check.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK/logs"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's facezoo, also in the subprocesses
if [[ $MODE == cpu ]]; then
    export CUDA_VISIBLE_DEVICES=""                    # CPU even on a GPU machine
    IMG=32 WIDTHS="[8, 16, 16, 32]" BATCH=16 IDS=16 PAIRS=40
else
    IMG=112 WIDTHS="[16, 32, 64, 128]" BATCH=64 IDS=64 PAIRS=200
fi
STEPS=8                                         # 2 epochs of 4 steps: IDS x 4 images / BATCH
QUICK=("eval.targets=[]" "export.enabled=false")  # for the runs that are only compared, not evaluated

FAILED=0
PASSED=0
SKIPPED=0
START=$SECONDS

line() { printf '%-24s %-4s  %s\n' "$1" "$2" "$3"; }

# check NAME CUDA_ONLY FUNCTION: run FUNCTION with its output in logs/NAME.log; FUNCTION writes its key number to
# "$KEY" and exits non-zero on failure (it runs in a background subshell, so `set -e` holds inside it).
check() {
    local name=$1 cuda_only=$2 fn=$3 t0=$SECONDS
    [[ -z $ONLY || $ONLY == *",$name,"* ]] || return 0
    if [[ $cuda_only == 1 && $MODE == cpu ]]; then
        line "$name" SKIP "needs CUDA (--cpu run)"
        SKIPPED=$((SKIPPED + 1))
        return 0
    fi
    KEY="$WORK/logs/$name.key"
    LOG="$WORK/logs/$name.log"
    : >"$KEY"
    (set -euo pipefail; "$fn") >"$LOG" 2>&1 &
    local status=0
    wait $! || status=$?
    local key
    key=$(cat "$KEY")
    if [[ $status -eq 0 && $key == SKIP:* ]]; then
        line "$name" SKIP "${key#SKIP: }"
        SKIPPED=$((SKIPPED + 1))
    elif [[ $status -eq 0 ]]; then
        line "$name" PASS "$key ($((SECONDS - t0)) s)"
        PASSED=$((PASSED + 1))
    else
        line "$name" FAIL "${key:-exit $status} ($((SECONDS - t0)) s)${KEEP:+; log: $LOG}"
        FAILED=$((FAILED + 1))
        tail -n 40 "$LOG" | sed 's/^/    | /'
    fi
}

# --- helpers used by the checks -------------------------------------------------------------------------------------

# the tiny synthetic recipe every training check starts from (overrides change one thing each)
write_recipe() {
    cat >"$WORK/tiny.yaml" <<EOF
model: {name: iresnet18_gwp, embed_dim: 64, args: {layers: [1, 1, 1, 1], widths: $WIDTHS, img_size: $IMG}}
data: {train: synthetic, batch_size: $BATCH, num_workers: 0, synthetic: {identities: $IDS, images_per_identity: 4}}
loss: {name: arcface, s: 16.0, m: 0.3, sample_rate: 0.5}
optim: {name: sgd, lr: 0.05, clip_grad_norm: 5}
schedule: {name: polynomial, warmup_epochs: 0.5}
train: {epochs: 2, checkpoint_every: 2, log_every: 1, tensorboard: false}
eval: {targets: [synthetic], synthetic_pairs: $PAIRS, batch_size: 64}
export: {enabled: true, datasets: [synthetic]}
EOF
}

# train RUN [key=value ...]: `facezoo train` on the tiny recipe into $WORK/RUN, deterministic kernels (so runs compare)
train() {
    local run=$1
    shift
    CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" - train "$WORK/tiny.yaml" --output-dir "$WORK/$run" --quiet "$@" <<'EOF'
import sys

import torch

torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True
torch.use_deterministic_algorithms(True, warn_only=True)  # a kernel without a deterministic version only warns
from facezoo.cli import main

sys.exit(main(sys.argv[1:]))
EOF
}

# trained RUN [WANT]: train.log reached the last step on the expected device with a finite loss; prints the key number
trained() {
    "$PY" - "$WORK/$1/train.log" "$MODE" "${2:-}" <<'EOF'
import math
import re
import sys

log, mode, want = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(log).read()
setup = re.search(r"process\(es\) on (\S+),", text)
steps = re.findall(r"step (\d+)/(\d+) epoch \d+ loss (\S+) .*img/s(.*)", text)
if not setup or not steps:
    sys.exit(f"{log}: no set-up or step lines")
device = setup.group(1)
if not device.startswith(mode):
    sys.exit(f"{log}: trained on {device}, expected {mode}")
step, total, loss, tail = steps[-1]
if step != total or not math.isfinite(float(loss)):
    sys.exit(f"{log}: last step {step}/{total}, loss {loss}")
if want and want not in tail:
    sys.exit(f"{log}: {want!r} not in the last step line")
print(f"loss {float(loss):.3f} at step {step} on {device}{tail.rstrip()}")
EOF
}

# --- the checks -----------------------------------------------------------------------------------------------------

check_cuda() {
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; \
p = torch.cuda.get_device_properties(0); \
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' >"$KEY"
}

check_synth_data() {
    "$PY" -m facezoo data synth "$WORK/data" --identities "$IDS" --per-identity 4 --pairs "$PAIRS" --quiet
    echo "$((IDS * 4)) images, $PAIRS pairs ($WORK/data)" >"$KEY"
}

check_train_base() {  # fp32, channels_last, no compile: also the reference of the resume check
    write_recipe
    train base model.channels_last=true model.compile=false
    trained base >"$KEY"
}

check_train_fp16() {
    train fp16 'train.mixed_precision=fp16'
    trained fp16 loss_scale >"$KEY"
}

check_train_bf16() {
    train bf16 'train.mixed_precision=bf16'
    trained bf16 >"$KEY"
}

check_train_compile() {
    train compile model.compile=true
    trained compile >"$KEY"
}

check_grad_accum() {  # the same global batch in 2 micro-batches
    train accum train.grad_accum=2 "${QUICK[@]}"
    trained accum >"$KEY"
    grep -q "per process and micro-batch" "$WORK/accum/train.log"
}

check_resume() {  # stop mid-epoch at step 3, resume: the final weights equal the uninterrupted run's, bit for bit
    train resumed model.channels_last=true model.compile=false "${QUICK[@]}" --stop-at-step 3
    train resumed model.channels_last=true model.compile=false "${QUICK[@]}" --resume latest
    "$PY" - "$WORK/base" "$WORK/resumed" "$STEPS" >"$KEY" <<'EOF'
import sys
from pathlib import Path

from safetensors.torch import load_file

a, b, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def weights(run):
    last = run / "checkpoints" / f"step_{steps}"
    files = [last / "backbone.safetensors", last / "backbone_optim.safetensors", *sorted(last.glob("partial_fc/*"))]
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


wa, wb = weights(a), weights(b)
if wa.keys() != wb.keys():
    sys.exit(f"different tensors: {sorted(set(wa) ^ set(wb))[:5]}")
diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
print(f"{len(wa)} tensors, max abs diff {diff:.3g} after stop at 3 + resume to {steps}")
sys.exit(0 if diff == 0 else 1)
EOF
}

check_eval() {  # facezoo eval of the trained export on the synthetic .bin
    "$PY" -m facezoo eval "local-dir:$WORK/base/export" --bins "$WORK/data" --output-dir "$WORK/eval" --quiet \
        --device "$MODE" --batch-size 64
    "$PY" - "$WORK/eval/results.json" >"$KEY" <<'EOF'
import json
import sys

doc = json.load(open(sys.argv[1]))
print(f"synth_verify accuracy {100 * doc['verification']['synth_verify']['accuracy']:.2f}% ({doc['model']})")
EOF
}

check_onnx() {  # facezoo export onnx of the trained export, compared with torch by onnxruntime
    if ! "$PY" -c 'import onnx, onnxscript' 2>/dev/null; then
        echo "SKIP: onnx / onnxscript not installed (pip install 'facezoo[onnx]')" >"$KEY"
        return 0
    fi
    "$PY" -m facezoo export onnx "local-dir:$WORK/base/export" --output "$WORK/model.onnx" | tee "$WORK/onnx.out"
    grep -o "max abs diff [^ ]* (largest output [^)]*)" "$WORK/onnx.out" >"$KEY" || echo "checker ok" >"$KEY"
}

check_bench_train() {  # bench_train.py through the real DataLoader on a .rec: facezoo vs an insightface-style loop
    local args
    if [[ $MODE == cpu ]]; then
        args=(--model iresnet18_gwp --model-args "{layers: [1, 1, 1, 1], widths: $WIDTHS, img_size: $IMG}"
            --batch 8 --steps 2 --rounds 1 --classes 1000 --sample-rate 0.2 --rec "$WORK/data" --workers 0)
    else
        "$PY" -m facezoo data synth "$WORK/rec" --identities 1000 --per-identity 8 --pairs 0 --workers 8 --quiet
        # shellcheck disable=SC2206  # word splitting of the extra options is intended
        args=(--model iresnet50_gwp --batch 512 --steps 10 --rounds 3 --classes 2000000 --sample-rate 0.2
            --precision bf16 --device cuda --rec "$WORK/rec" --workers 8 ${GPU_CHECK_BENCH_ARGS:-})
    fi
    "$PY" benchmarks/bench_train.py "${args[@]}" --target 8000 --output-dir "$WORK/bench_run" \
        --json "$WORK/bench.json"
    "$PY" - "$WORK/bench.json" >"$KEY" <<'EOF'
import json
import sys

d = json.load(open(sys.argv[1]))
m, peak = d["median"], d["peak_memory_gib"]
line = f"{m['facezoo']:.0f} img/s ({m['facezoo'] / d['target']:.3f} of 8000), insightface-style {m['reference']:.0f}"
line += f" img/s (ratio {m['ratio']:.3f})"
if peak["facezoo"]:
    line += f", peak memory {peak['facezoo']:.1f} / {peak['reference']:.1f} GiB"
print(line)
EOF
}

echo "facezoo GPU check ($MODE): $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), work folder $WORK"
check cuda 1 check_cuda
check synth_data 0 check_synth_data
check train_fp32_cl 0 check_train_base
check train_fp16_scaler 1 check_train_fp16
check train_bf16 1 check_train_bf16
check train_compile 1 check_train_compile
check grad_accum 0 check_grad_accum
check resume_exact 0 check_resume
check eval 0 check_eval
check export_onnx 0 check_onnx
check bench_train 0 check_bench_train
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped in $((SECONDS - START)) s"
[[ $FAILED -eq 0 ]]
