#!/usr/bin/env bash
# Common launch logic of the Slurm entry points (redi_7b.sh, sft_7b.sh), sourced by them after
# they set REPO_DIR and CONFIG. `launch_job` starts one training process per GPU with srun (one
# task per process: no torchrun between Slurm and the trainer), and turns Slurm's time-limit
# signal into a save and a requeue:
#   sbatch --signal=B:TERM@300 (or `scancel --signal=TERM --batch JOB`) signals this batch shell;
#   it creates the stop file REDI_STOP_FILE, which the trainer polls every step. The trainer
#   finishes the step, saves, records "saved N" in that file and exits 0; the job then requeues
#   itself and resumes from the checkpoint. srun itself is never signalled: it would kill the step.
#   `scontrol requeue`, preemption and `scancel` send SIGTERM to every process: the trainer saves
#   the same way within the cluster's KillWait (slurm.conf) before Slurm kills what is left, and
#   the job comes back only if Slurm requeues it (a cancelled job stays cancelled).
# Settings (environment variables, all optional):
#   SAVE_DIR          checkpoint.save override (where the run saves and resumes from)
#   LOAD_DIR          checkpoint.load override (the Stage 1 result or a converted base model)
#   DATA_PATH         data.path override (shard prefix from tools/preprocess_data.py)
#   EXTRA_ARGS        more dotted overrides, space separated (e.g. "optim.lr=5e-7 train.max_steps=100")
#   GPUS_PER_NODE     processes per node; default: the GPUs Slurm allocated on the node
#                     (sbatch --gpus-per-node / --gres), or on nodes without GPUs the tasks per
#                     node asked for (sbatch --ntasks-per-node, default 1)
#   NNODES            checked against the allocation (sbatch --nodes) when set
#   MASTER_PORT       rendezvous port (default 20000 + job id % 20000: jobs sharing a node differ)
#   LOG_DIR           job files, the stop file among them (default $REPO_DIR/logs/slurm-$SLURM_JOB_ID)
#   PYTHON            interpreter (default python)
#   CONTAINER_IMAGE   run inside this image with pyxis (srun --container-image), mounting
#                     CONTAINER_MOUNTS (default: the repository)
#   AUTO_REQUEUE      1 (default): after a save on the time-limit signal, requeue the job
set -euo pipefail

: "${REPO_DIR:?the entry script sets REPO_DIR}"
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-$REPO_DIR/logs/slurm-${SLURM_JOB_ID:-local}}
AUTO_REQUEUE=${AUTO_REQUEUE:-1}
# Megatron orders tensor-parallel communication behind compute on a single CUDA stream queue.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# A hung collective becomes an error (and a restartable job) instead of a silent stall.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export PYTHONPATH=$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}
export REDI_STOP_FILE=$LOG_DIR/stop-request

# Prints an error for the job log and exits 2 (a configuration problem, not a crash).
fail() {
    echo "error: $*" >&2
    exit 2
}

# Prints the training processes per node: GPUS_PER_NODE, else the GPUs Slurm allocated on this
# node, else the tasks per node of the allocation (CPU nodes).
processes_per_node() {
    if [[ -n ${GPUS_PER_NODE:-} ]]; then
        echo "$GPUS_PER_NODE"
    elif [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
        echo "${SLURM_GPUS_PER_NODE##*:}"  # "8" or "h100:8"
    elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
        local devices
        IFS=, read -r -a devices <<< "$CUDA_VISIBLE_DEVICES"
        echo "${#devices[@]}"
    else
        local tasks=${SLURM_TASKS_PER_NODE:-1}
        echo "${tasks%%(*}"  # "2" or "2(x3)"
    fi
}

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

# Batch side: srun starts every training process; the time-limit signal becomes a stop file.
launch_job() {
    : "${CONFIG:?set CONFIG to a YAML config}"
    [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_JOB_NODELIST:-} ]] ||
        fail "launch_job runs inside a Slurm allocation: sbatch slurm/$(basename "$0")"
    local nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} procs cpus
    if [[ -n ${NNODES:-} && $NNODES != "$nnodes" ]]; then
        fail "NNODES=$NNODES but the allocation has $nnodes node(s): submit with sbatch --nodes=$NNODES"
    fi
    procs=$(processes_per_node)
    [[ $procs =~ ^[1-9][0-9]*$ ]] || fail "processes per node '$procs' is not a positive number (GPUS_PER_NODE)"
    cpus=${SLURM_CPUS_ON_NODE:-$procs}
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    export MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus / procs > 0 ? cpus / procs : 1 ))}
    mkdir -p "$LOG_DIR"
    rm -f "$REDI_STOP_FILE"
    echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $nnodes node(s) x $procs process(es)," \
         "master $MASTER_ADDR:$MASTER_PORT, config $CONFIG"
    if ((cpus < procs)); then
        echo "warning: $cpus CPU(s) per node for $procs processes: submit with --exclusive or --cpus-per-task" >&2
    fi
    if [[ -n ${SAVE_DIR:-} && -f $SAVE_DIR/latest_checkpointed_iteration.txt ]]; then
        echo "resuming from $SAVE_DIR (iteration $(cat "$SAVE_DIR/latest_checkpointed_iteration.txt"))"
    fi

    local srun_args=(--nodes="$nnodes" --ntasks=$((nnodes * procs)) --ntasks-per-node="$procs"
                     --cpus-per-task=$(( cpus / procs > 0 ? cpus / procs : 1 )) --kill-on-bad-exit=1)
    if ((cpus < procs)); then srun_args+=(--overcommit); fi
    if [[ -n ${CONTAINER_IMAGE:-} ]]; then
        srun_args+=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$REPO_DIR:$REPO_DIR}"
                    --container-workdir="$REPO_DIR")
    fi
    local arguments=()
    mapfile -t arguments < <(train_arguments)
    srun "${srun_args[@]}" "$PYTHON" -m redi_megatron.cli train "${arguments[@]}" &
    local srun_pid=$! status=0
    trap 'echo "SIGTERM: asking the trainer to save and stop"; touch "$REDI_STOP_FILE"' TERM
    # `wait` returns early when the trap runs; keep waiting until srun itself has finished.
    while kill -0 "$srun_pid" 2>/dev/null; do
        wait "$srun_pid" && status=0 || status=$?
    done
    trap - TERM
    if ((status == 0)) && grep -q '^saved' "$REDI_STOP_FILE" 2>/dev/null; then
        echo "the trainer $(cat "$REDI_STOP_FILE") before the job ended"
        # RUNNING: the time-limit signal. Otherwise Slurm is ending the job (scancel, scontrol
        # requeue, preemption) and decides itself whether it comes back.
        local state
        state=$(scontrol show job "$SLURM_JOB_ID" | grep -o 'JobState=[A-Z_]*' || true)
        if [[ $AUTO_REQUEUE == 1 && $state == JobState=RUNNING ]]; then
            echo "requeueing job $SLURM_JOB_ID to continue from that checkpoint"
            scontrol requeue "$SLURM_JOB_ID"
        else
            echo "not requeueing here (${state:-JobState unknown}, AUTO_REQUEUE=$AUTO_REQUEUE)"
        fi
    fi
    return "$status"
}
