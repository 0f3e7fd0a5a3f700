"""The model to evaluate as a Hugging Face directory: given as one, or exported from a Megatron checkpoint.

The export (redi_megatron.qwen.conversion) runs in a spawned process: it starts a one-rank
torch.distributed group and Megatron's parallel state, which must not outlive it in the process
that then samples (vLLM starts its own). It is written once under the run's output directory and
reused by a restart (the converter renames its output into place only when complete).
"""

import multiprocessing
import os
from pathlib import Path

from redi_megatron.config import ConfigError


def resolve_hf_model(model: str | Path, out_dir: str | Path, iteration: int | None = None) -> tuple[Path, dict]:
    """Return (HF directory to sample from, identity of the model for the run manifest)."""
    model = Path(model).resolve()
    if (model / "config.json").is_file():  # a checkpoint root keeps its config under hf_source/
        return model, {"hf": str(model)}
    from redi_megatron.checkpointing import HF_SOURCE_DIR, TRACKER_FILE, latest_iteration  # imports megatron

    if (model / TRACKER_FILE).exists() or (model / HF_SOURCE_DIR).is_dir():
        if iteration is None:
            iteration = latest_iteration(str(model))
            if iteration is None:
                raise ConfigError(f"--model {model}: no {TRACKER_FILE}; pass --iteration")
        target = Path(out_dir).resolve() / "hf_export" / f"iter_{iteration:07d}"
        if not target.is_dir():
            _export(model, target, iteration)
        return target, {"megatron_checkpoint": str(model), "iteration": iteration}
    raise ConfigError(f"--model {model}: neither a Megatron checkpoint root ({TRACKER_FILE}) "
                      "nor a Hugging Face directory (config.json)")


def _export(checkpoint: Path, target: Path, iteration: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_export_in_child, args=(str(checkpoint), str(target), iteration))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"exporting {checkpoint} (iteration {iteration}) to {target} failed "
                           f"(exit code {process.exitcode}); its traceback is above")


def _export_in_child(checkpoint: str, target: str, iteration: int) -> None:
    # The export is one process whatever launched the evaluation (torchrun or Slurm variables).
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_PORT"):
        os.environ.pop(name, None)
    from redi_megatron.qwen.conversion import convert_megatron_to_hf

    convert_megatron_to_hf(checkpoint, target, iteration=iteration, progress=lambda _: None)
