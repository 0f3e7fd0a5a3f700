#!/usr/bin/env bash
# Stage 2 (REDI, alpha 0.8) of Qwen2.5-Math-7B from its SFT checkpoint on 2 nodes x 8 GPUs.
#   sbatch slurm/redi_7b.sh                      (from the repository root)
#   SAVE_DIR=/ckpt/7b-redi DATA_PATH=/data/tokens/pairs sbatch slurm/redi_7b.sh
# Settings: see slurm/launch.sh. SIGTERM arrives 300 s before the time limit; the trainer saves
# to checkpoint.save and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=redi-7b
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}
export CONFIG=${CONFIG:-$REPO_DIR/examples/qwen2.5_math_7b_redi.yaml}
# shellcheck source=slurm/launch.sh
source "$REPO_DIR/slurm/launch.sh"
launch_job
