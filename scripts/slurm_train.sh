#!/bin/bash
# Example SLURM job: one facezoo training run on N nodes x 8 GPUs, preemption-safe and requeueable.
#   sbatch scripts/slurm_train.sh recipes/paper/arcface.yaml model.name=iresnet50_gwp_k7 data.train=/data/webface4m
# The run folder must be on a filesystem every node sees. SLURM sends SIGTERM 120 s before the time limit
# (--signal); facezoo then finishes its step, writes a checkpoint and exits; the job is requeued (--requeue) and
# `--resume latest` continues from that checkpoint (or starts at step 0 on the first run).
#SBATCH --job-name=facezoo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=runs/slurm-%x-%j.out
set -euo pipefail
recipe="$1"; shift
gpus_per_node=8
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export GPUS_PER_NODE=$gpus_per_node HEAD_NODE=$head_node
# bash -c expands SLURM_NODEID on each node; the recipe and overrides travel as "$@", quoting intact
srun --kill-on-bad-exit=1 bash -c 'accelerate launch --multi_gpu \
    --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$HEAD_NODE" --main_process_port 29500 \
    --mixed_precision no --dynamo_backend no \
    -m facezoo train "$@" --output-dir "runs/$SLURM_JOB_NAME" --resume latest' bash "$recipe" "$@"
