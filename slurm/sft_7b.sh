#!/usr/bin/env bash
# Stage 1 (SFT on correct traces) of Qwen2.5-Math-7B on 2 nodes x 8 GPUs.
#   sbatch slurm/sft_7b.sh                      (from the repository root)
#   SAVE_DIR=/ckpt/7b-sft DATA_PATH=/data/tokens/sft sbatch slurm/sft_7b.sh
# Settings: see slurm/launch.sh. SIGTERM arrives 300 s before the time limit; the trainer saves
# to checkpoint.save and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=sft-7b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}
export CONFIG=${CONFIG:-$REPO_DIR/examples/qwen2.5_math_7b_sft.yaml}
# shellcheck source=slurm/launch.sh
source "$REPO_DIR/slurm/launch.sh"
launch_job
