"""A 3-layer model at PP=2 (uneven stages) equals one process, and converts HF -> PP=2 -> HF exactly.

Parity: a single process fixes the weights, the first step's gradients and three optimizer steps'
losses (SFT); two gloo processes then run PP=2 with the automatic split (2 + 1 layers) and with
``parallel.layers_in_first_stage=1`` (1 + 2): same losses and per-tensor gradients (fp32,
relative error <= 1e-5, as test_parallel_parity). Gradients are matched by global layer name,
so a wrong layer offset on a stage fails.

Conversion: a tiny 3-layer Hugging Face Qwen2 is converted, loaded at both PP=2 splits (logits
checked against transformers), saved there, exported back, and must equal the original tensors
bitwise.
"""

import glob
import os

import pytest
import torch
from harness import assert_gradients_close, run_spawned
from safetensors.torch import load_file

from test_conversion import TOLERANCE, _full_logits, _hf_logits
from test_parallel_parity import GRAD_RTOL, LOSS_RTOL, _config, _run
from test_qwen_state_dict_mapping import tiny_qwen

THREE_LAYERS = ["model.num_layers=3"]
SPLITS = {
    "auto": {"pipeline": 2},
    "first1": {"pipeline": 2, "layers_in_first_stage": 1},
}


def _overrides(split):
    return [f"parallel.{key}={value}" for key, value in SPLITS[split].items()]


def _reference(rank, world_size, workdir):
    from redi_megatron.checkpointing import save_checkpoint
    from redi_megatron.engine import build_engine

    engine = build_engine(_config("sft", THREE_LAYERS), total_steps=10)
    save_checkpoint(os.path.join(workdir, "weights"), 0, engine.chunks)
    losses, gradients = _run(engine, "sft", 0, 1, with_gradients=True)
    torch.save({"losses": losses, "gradients": gradients}, os.path.join(workdir, "reference.pt"))


def _pipelines(rank, world_size, workdir):
    from megatron.core.utils import unwrap_model

    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.engine import build_engine

    reference = torch.load(os.path.join(workdir, "reference.pt"))
    layers = {}
    for split in SPLITS:
        engine = build_engine(_config("sft", THREE_LAYERS + _overrides(split)), total_steps=10)
        load_checkpoint(os.path.join(workdir, "weights"), engine.chunks, engine.optimizer,
                        weights_only=True)
        layers[split] = len(unwrap_model(engine.chunks[0]).decoder.layers)
        losses, gradients = _run(engine, "sft", 0, 1, with_gradients=True)
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference["losses"]),
                                   rtol=LOSS_RTOL, atol=0, msg=lambda m: f"{split}: {m}")
        assert_gradients_close(gradients, reference["gradients"], GRAD_RTOL, split)
    torch.save(layers, os.path.join(workdir, f"layers_rank{rank}.pt"))


def test_three_layers_at_pp2_match_single_process(tmp_path):
    workdir = str(tmp_path)
    run_spawned(_reference, 1, workdir, error_dir=os.path.join(workdir, "errors_reference"))
    run_spawned(_pipelines, 2, workdir, error_dir=os.path.join(workdir, "errors_pipelines"))
    first, last = (torch.load(os.path.join(workdir, f"layers_rank{r}.pt")) for r in (0, 1))
    assert (first["auto"], last["auto"]) == (2, 1)
    assert (first["first1"], last["first1"]) == (1, 2)


def _convert(rank, world_size, work):
    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron

    convert_hf_to_megatron(f"{work}/hf", f"{work}/ckpt", ParallelConfig(pipeline=2),
                           torch.float32, progress=lambda _: None)


def _load_check_save(rank, world_size, work, tokens):
    from megatron.core import parallel_state

    from redi_megatron import runtime
    from redi_megatron.checkpointing import copy_hf_source, load_checkpoint, save_checkpoint
    from redi_megatron.config import ModelConfig, ParallelConfig
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.megatron_checkpoint_io import CPU
    from redi_megatron.qwen.model import build_model_chunks, transformer_config

    runtime.init_distributed(CPU)
    model_config = ModelConfig(hf_config=f"{work}/ckpt/hf_source")
    arch = architecture_from_model_config(model_config)
    for split, keys in SPLITS.items():
        parallel = ParallelConfig(**keys)
        runtime.validate_layout(arch, parallel, world_size)
        runtime.init_parallel_state(parallel, seed=1)
        config = transformer_config(arch, parallel, model_config, CPU, "fp32")
        chunks = build_model_chunks(arch, config, CPU, arch.padded_vocab_size(128, 1))
        load_checkpoint(f"{work}/ckpt", chunks, weights_only=True)
        with torch.no_grad():
            logits = _full_logits(chunks, tokens)
        if parallel_state.is_pipeline_last_stage():
            torch.save(logits[..., :arch.vocab_size], f"{work}/{split}_logits.pt")
        save_checkpoint(f"{work}/{split}_ckpt", 1, chunks)
        copy_hf_source(f"{work}/ckpt", f"{work}/{split}_ckpt")


def _export(rank, world_size, work):
    from redi_megatron.qwen.conversion import convert_megatron_to_hf

    for split in SPLITS:
        convert_megatron_to_hf(f"{work}/{split}_ckpt", f"{work}/{split}_export",
                               progress=lambda _: None)


def _tensors(directory):
    tensors = {}
    for file in glob.glob(os.path.join(directory, "*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.timeout(300)
def test_conversion_round_trip_through_uneven_pp2(tmp_path):
    work = str(tmp_path)
    tiny_qwen(tmp_path / "hf", tied=False, num_hidden_layers=3)
    tokens = torch.randint(0, 1001, (2, 24), generator=torch.Generator().manual_seed(3))
    reference = _hf_logits(f"{work}/hf", tokens)

    run_spawned(_convert, 1, work, error_dir=f"{work}/errors1")
    run_spawned(_load_check_save, 2, work, tokens, error_dir=f"{work}/errors2")
    run_spawned(_export, 1, work, error_dir=f"{work}/errors3")

    original = _tensors(f"{work}/hf")
    for split in SPLITS:
        torch.testing.assert_close(torch.load(f"{work}/{split}_logits.pt"), reference,
                                   rtol=0, atol=TOLERANCE)
        exported = _tensors(f"{work}/{split}_export")
        assert sorted(exported) == sorted(original), split
        for key, tensor in original.items():
            assert torch.equal(exported[key], tensor), (split, key)
