#!/usr/bin/env bash
# Evaluate a model like the paper (pass@1 over 16 samples, temperature 0.6, top-p 0.95, up to
# 32,768 new tokens) on one node: vLLM, when installed, shards the model over all its GPUs;
# otherwise transformers samples on one GPU.
#   MODEL=/ckpt/redi OUT=/eval/redi \
#   BENCHMARKS="bench/MATH-500.jsonl bench/AIME24.jsonl bench/AMC23.jsonl bench/Minerva.jsonl bench/OlympiadBench.jsonl" \
#   sbatch slurm/evaluate.sh
# MODEL: a Megatron checkpoint root (exported to HF under $OUT on the fly) or an HF directory.
# Optional: SAMPLES, TEMPERATURE, TOP_P, MAX_NEW_TOKENS, SEED, GRADER (package|paper), PYTHON,
# EXTRA_ARGS (more `redi-megatron evaluate` flags, e.g. "--max-model-len 40960").
# Generations are appended per problem, so the job is resumable: SIGTERM arrives 120 s before the
# time limit, the job requeues itself, and the rerun continues from $OUT/generations.jsonl.
#SBATCH --job-name=redi-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}
PYTHON=${PYTHON:-python}
: "${MODEL:?set MODEL to a Megatron checkpoint root or a Hugging Face directory}"
: "${BENCHMARKS:?set BENCHMARKS to the benchmark JSONL files, separated by spaces}"
: "${OUT:?set OUT to the output directory}"
read -r -a benchmark_files <<< "$BENCHMARKS"
read -r -a extra_args <<< "${EXTRA_ARGS:-}"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

child=""
requeue() {
  echo "SIGTERM: stopping; job ${SLURM_JOB_ID:-?} is requeued and resumes from $OUT/generations.jsonl"
  if [[ -n $child ]]; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" || true
  fi
  if [[ -n ${SLURM_JOB_ID:-} ]]; then
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit 0
}
trap requeue TERM

"$PYTHON" -m redi_megatron.cli evaluate --model "$MODEL" --benchmarks "${benchmark_files[@]}" --out "$OUT" \
  --samples "${SAMPLES:-16}" --temperature "${TEMPERATURE:-0.6}" --top-p "${TOP_P:-0.95}" \
  --max-new-tokens "${MAX_NEW_TOKENS:-32768}" --seed "${SEED:-0}" --grader "${GRADER:-package}" \
  "${extra_args[@]}" &
child=$!
wait "$child"
