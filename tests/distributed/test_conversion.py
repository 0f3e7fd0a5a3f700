"""HF -> Megatron -> HF at TP=1, TP=2 and PP=2: bitwise tensors and matching logits; train then export.

Three spawned gloo jobs: (1) one process converts a tied and an untied tiny Qwen2 and checks its
logits at TP=1; (2) two processes load each checkpoint at TP=2 and at PP=2, check the logits and
re-save at that layout, then take two SGD steps at TP=2 and save; (3) one process exports every
re-saved checkpoint back to Hugging Face, which this process compares with the originals.
The training loop (redi_megatron.training) is not used: a plain torch SGD step stands in for it.
"""

import glob
import os
import subprocess
import sys

import pytest
import torch
from harness import run_spawned
from safetensors.torch import load_file

from test_qwen_state_dict_mapping import tiny_qwen

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}
TOLERANCE = 1e-4


def _convert_and_check(rank, world_size, work, names, tokens):
    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron, convert_megatron_to_hf
    from redi_megatron.qwen.logit_check import megatron_logits

    for name in names:
        convert_hf_to_megatron(f"{work}/{name}_hf", f"{work}/{name}_ckpt",
                               ParallelConfig(tensor=2), torch.float32, progress=lambda _: None)
        torch.save(megatron_logits(f"{work}/{name}_ckpt", tokens), f"{work}/{name}_tp1_logits.pt")
        convert_megatron_to_hf(f"{work}/{name}_ckpt", f"{work}/{name}_tp1_export",
                               max_shard_bytes=60_000, progress=lambda _: None)


def _full_logits(chunks, tokens):
    """Returns [b, s, padded vocab] logits on every rank (pipeline by hand, TP gathered)."""
    from megatron.core import parallel_state, tensor_parallel

    model = chunks[0]
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    if not parallel_state.is_pipeline_first_stage():
        received = torch.empty(tokens.shape[1], tokens.shape[0], model.config.hidden_size)
        torch.distributed.recv(received, group=pp_group, group_src=0)
        model.set_input_tensor(received)
    hidden = model(tokens, positions, None)
    if not parallel_state.is_pipeline_last_stage():
        torch.distributed.send(hidden.detach(), group=pp_group, group_dst=pp_size - 1)
        return None
    hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    logits = hidden.transpose(0, 1) @ model.output_weight().t()
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def _layouts_and_training(rank, world_size, work, names, tokens):
    from megatron.core import parallel_state, tensor_parallel

    from redi_megatron import runtime
    from redi_megatron.checkpointing import copy_hf_source, load_checkpoint, save_checkpoint
    from redi_megatron.config import ModelConfig, ParallelConfig
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.megatron_checkpoint_io import CPU
    from redi_megatron.qwen.model import build_model_chunks, transformer_config

    runtime.init_distributed(CPU)

    def load(name, parallel):
        runtime.init_parallel_state(parallel, seed=1)
        model_config = ModelConfig(hf_config=f"{work}/{name}_ckpt/hf_source")
        arch = architecture_from_model_config(model_config)
        config = transformer_config(arch, parallel, model_config, CPU, "fp32")
        chunks = build_model_chunks(arch, config, CPU, arch.padded_vocab_size(128, parallel.tensor))
        load_checkpoint(f"{work}/{name}_ckpt", chunks, weights_only=True)
        return arch, chunks

    def save(chunks, source, target, iteration):
        save_checkpoint(target, iteration, chunks)
        copy_hf_source(source, target)

    for name in names:
        for layout, (tp, pp) in LAYOUTS.items():
            arch, chunks = load(name, ParallelConfig(tensor=tp, pipeline=pp))
            with torch.no_grad():
                logits = _full_logits(chunks, tokens)
            if logits is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
                torch.save(logits[..., :arch.vocab_size], f"{work}/{name}_{layout}_logits.pt")
            save(chunks, f"{work}/{name}_ckpt", f"{work}/{name}_{layout}_ckpt", 3)

    # Training as the loss head does it: vocab-parallel cross-entropy on this rank's logits.
    arch, chunks = load("untied", ParallelConfig(tensor=2))
    model = chunks[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    for _ in range(2):
        hidden = tensor_parallel.copy_to_tensor_model_parallel_region(model(tokens, positions, None))
        local_logits = hidden[:-1] @ model.output_weight().t()
        loss = tensor_parallel.vocab_parallel_cross_entropy(
            local_logits.contiguous(), tokens.t()[1:].contiguous()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = _full_logits(chunks, tokens)[..., :arch.vocab_size]
    if rank == 0:
        torch.save(logits, f"{work}/trained_logits.pt")
    save(chunks, f"{work}/untied_ckpt", f"{work}/trained_ckpt", 2)


def _export(rank, world_size, work, names):
    from redi_megatron.qwen.conversion import convert_megatron_to_hf

    for source in [f"{name}_{layout}" for name in names for layout in LAYOUTS] + ["trained"]:
        convert_megatron_to_hf(f"{work}/{source}_ckpt", f"{work}/{source}_export",
                               progress=lambda _: None)


def _tensors(directory):
    tensors = {}
    for file in glob.glob(os.path.join(directory, "*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _hf_logits(directory, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_round_trip_through_layouts_and_training(tmp_path):
    work = str(tmp_path)
    names = ("tied", "untied")
    tiny_qwen(tmp_path / "tied_hf", tied=True, num_hidden_layers=4)
    tiny_qwen(tmp_path / "untied_hf", tied=False, num_hidden_layers=4, max_shard_size="100KB")
    tokens = torch.randint(0, 1001, (2, 24), generator=torch.Generator().manual_seed(3))
    reference = {name: _hf_logits(f"{work}/{name}_hf", tokens) for name in names}

    run_spawned(_convert_and_check, 1, work, names, tokens, error_dir=f"{work}/errors1")
    run_spawned(_layouts_and_training, 2, work, names, tokens, error_dir=f"{work}/errors2")
    run_spawned(_export, 1, work, names, error_dir=f"{work}/errors3")

    for name in names:
        original = _tensors(f"{work}/{name}_hf")
        for layout in ("tp1",) + tuple(LAYOUTS):
            torch.testing.assert_close(torch.load(f"{work}/{name}_{layout}_logits.pt"),
                                       reference[name], rtol=0, atol=TOLERANCE)
            exported = _tensors(f"{work}/{name}_{layout}_export")
            assert sorted(exported) == sorted(original), (name, layout)
            for key, tensor in original.items():
                assert torch.equal(exported[key], tensor), (name, layout, key)
    assert "lm_head.weight" not in _tensors(f"{work}/tied_tp1_export")
    assert len(glob.glob(f"{work}/untied_tp1_export/*.safetensors")) > 1

    trained = _hf_logits(f"{work}/trained_export", tokens)
    assert not torch.allclose(trained, reference["untied"], atol=1e-3), "training changed nothing"
    torch.testing.assert_close(trained, torch.load(f"{work}/trained_logits.pt"), rtol=0,
                               atol=TOLERANCE)


def test_cli_refuses_another_architecture_and_leaves_no_checkpoint(tmp_path):
    source = tmp_path / "llama"
    source.mkdir()
    (source / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], '
                                        '"model_type": "llama", "hidden_size": 64}')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megatron.py"),
         "--hf", str(source), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "LlamaForCausalLM" in result.stderr
    assert not (tmp_path / "out").exists()
