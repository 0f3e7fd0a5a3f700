#!/usr/bin/env bash
# Common launch logic of the Slurm entry points (redi_7b.sh, sft_7b.sh), in two roles:
#   sourced by the batch script: `launch_job` starts one srun task per node and handles SIGTERM,
#     re-queueing the job after the trainer saved (the trainer resumes from checkpoint.save itself);
#   executed by srun on each node (`launch.sh node`): runs torchrun with this node's rank.
# Settings (environment variables, all optional except CONFIG):
#   CONFIG            YAML config (the entry script sets its default)
#   SAVE_DIR          checkpoint.save override (where the run saves and resumes from)
#   LOAD_DIR          checkpoint.load override (the Stage 1 result or a converted base model)
#   DATA_PATH         data.path override (shard prefix from tools/preprocess_data.py)
#   EXTRA_ARGS        more dotted overrides, space separated (e.g. "optim.lr=5e-7 train.max_steps=100")
#   GPUS_PER_NODE     processes per node (default 8)
#   MASTER_PORT       rendezvous port (default 29500)
#   LOG_DIR           per-rank logs (default $REPO_DIR/logs/slurm-$SLURM_JOB_ID)
#   PYTHON            interpreter (default python); LAUNCHER overrides the whole launcher command
#                     (default "$PYTHON -m torch.distributed.run")
#   CONTAINER_IMAGE   run inside this image with pyxis (srun --container-image), mounting
#                     CONTAINER_MOUNTS (default: the repository)
#   AUTO_REQUEUE      1 (default): after a save on SIGTERM, requeue the job so it continues
set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-"$PYTHON -m torch.distributed.run"}
LOG_DIR=${LOG_DIR:-$REPO_DIR/logs/slurm-${SLURM_JOB_ID:-local}}
AUTO_REQUEUE=${AUTO_REQUEUE:-1}
# Megatron orders tensor-parallel communication behind compute on a single CUDA stream queue.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# A hung collective becomes an error (and a restartable job) instead of a silent stall.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export PYTHONPATH=$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}
export REPO_DIR GPUS_PER_NODE MASTER_PORT PYTHON LAUNCHER LOG_DIR

# Prints the training overrides, one per line, from CONFIG / SAVE_DIR / LOAD_DIR / DATA_PATH / EXTRA_ARGS.
train_arguments() {
    printf '%s\n' --config "$CONFIG"
    if [[ -n ${SAVE_DIR:-} ]]; then printf '%s\n' "checkpoint.save=$SAVE_DIR"; fi
    if [[ -n ${LOAD_DIR:-} ]]; then printf '%s\n' "checkpoint.load=$LOAD_DIR"; fi
    if [[ -n ${DATA_PATH:-} ]]; then printf '%s\n' "data.path=$DATA_PATH"; fi
    local extra=()
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    if ((${#extra[@]})); then printf '%s\n' "${extra[@]}"; fi
}

# Batch side: one srun task per node; SIGTERM (sbatch --signal=B:TERM@...) is passed to the
# node tasks so the trainer saves before the time limit, then the job is requeued.
launch_job() {
    : "${CONFIG:?set CONFIG to a YAML config}"
    : "${SLURM_JOB_NODELIST:?launch_job runs inside a Slurm allocation (sbatch)}"
    local nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    export MASTER_ADDR CONFIG NNODES=$nnodes
    mkdir -p "$LOG_DIR"
    echo "job ${SLURM_JOB_ID:-?}: $nnodes node(s) x $GPUS_PER_NODE, master $MASTER_ADDR:$MASTER_PORT, config $CONFIG"
    if [[ -n ${SAVE_DIR:-} && -f $SAVE_DIR/latest_checkpointed_iteration.txt ]]; then
        echo "resuming from $SAVE_DIR (iteration $(cat "$SAVE_DIR/latest_checkpointed_iteration.txt"))"
    fi

    local srun_args=(--nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1)
    if [[ -n ${CONTAINER_IMAGE:-} ]]; then
        srun_args+=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$REPO_DIR:$REPO_DIR}"
                    --container-workdir="$REPO_DIR")
    fi
    STOP_REQUESTED=0
    srun "${srun_args[@]}" bash "$REPO_DIR/slurm/launch.sh" node &
    SRUN_PID=$!
    trap 'STOP_REQUESTED=1; echo "SIGTERM: asking the trainer to save"; kill -TERM "$SRUN_PID" 2>/dev/null || true' TERM
    local status=0
    # `wait` returns early when the trap runs; keep waiting until srun itself has finished.
    while kill -0 "$SRUN_PID" 2>/dev/null; do
        wait "$SRUN_PID" && status=0 || status=$?
    done
    trap - TERM
    if ((STOP_REQUESTED)) && ((status == 0)) && [[ $AUTO_REQUEUE == 1 && -n ${SLURM_JOB_ID:-} ]]; then
        echo "saved before the time limit; requeueing job $SLURM_JOB_ID to continue"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}

# Node side: torchrun for this node, per-rank logs under LOG_DIR/node<rank>. SIGTERM goes straight
# to the training processes: torchrun would kill them 30 s after forwarding it, before a large
# checkpoint is written; the workers save, exit 0, and torchrun exits 0 with them.
launch_node() {
    local node_rank=${SLURM_NODEID:-${SLURM_PROCID:-0}}
    local launcher=() arguments=()
    read -r -a launcher <<< "$LAUNCHER"
    mapfile -t arguments < <(train_arguments)
    "${launcher[@]}" --nnodes="$NNODES" --nproc-per-node="$GPUS_PER_NODE" --node-rank="$node_rank" \
        --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" --max-restarts=0 \
        --log-dir="$LOG_DIR/node$node_rank" --redirects=3 --tee=3 \
        -m redi_megatron.cli train "${arguments[@]}" &
    local torchrun_pid=$!
    trap 'pkill -TERM -P "$torchrun_pid" || true' TERM
    local status=0
    while kill -0 "$torchrun_pid" 2>/dev/null; do
        wait "$torchrun_pid" && status=0 || status=$?
    done
    return "$status"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case ${1:-} in
        node) launch_node ;;
        *) echo "usage: launch.sh node (run by srun); sbatch slurm/redi_7b.sh or slurm/sft_7b.sh instead" >&2
           exit 2 ;;
    esac
fi
