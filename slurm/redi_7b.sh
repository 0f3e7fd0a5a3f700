#!/usr/bin/env bash
# Stage 2 (REDI, alpha 0.8) of Qwen2.5-Math-7B from its Stage 1 checkpoint. Resources come from
# the sbatch command line, e.g. 2 nodes x 8 GPUs:
#   MODEL_DIR=/models/Qwen2.5-Math-7B DATA_PATH=/data/tokens/pairs RUN_ROOT=/runs \
#     sbatch --nodes=2 --gpus-per-node=8 --exclusive slurm/redi_7b.sh
# Settings: see slurm/launch.sh and the config's ${...} knobs. SIGTERM arrives 300 s before the
# time limit; the trainer saves to checkpoint.save and the job requeues itself and resumes.
#SBATCH --job-name=redi-7b
#SBATCH --time=12:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

# sbatch runs a spooled copy of this file: find the repository from the path it was submitted as.
submitted=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=//p' || true)
for REPO_DIR in "${REPO_DIR:-}" "$(dirname "$0")/.." "$(dirname "$submitted")/.." "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -f $REPO_DIR/slurm/launch.sh ]]; then break; fi
done
[[ -f $REPO_DIR/slurm/launch.sh ]] || { echo "error: repository not found: set REPO_DIR" >&2; exit 2; }
REPO_DIR=$(cd "$REPO_DIR" && pwd)
export REPO_DIR CONFIG=${CONFIG:-$REPO_DIR/examples/qwen2.5_math_7b_redi.yaml}
# shellcheck source=slurm/launch.sh
source "$REPO_DIR/slurm/launch.sh"
launch_job
