"""Every call redi_megatron makes into megatron-core binds to the installed signatures.

The Transformer Engine layer spec cannot be built on a CPU-only machine, so its call is bound
(``inspect.signature(...).bind``) and stopped there; the other calls are bound on their way
through a real one-process run (build, train a step, save, resume), and the pipeline-schedule
arguments are also bound against the two pipelined schedules that run only with PP > 1. A
megatron-core release that renames or drops an argument fails here, on CPU, on both stacks.
"""

import inspect
import os

import pytest

from harness import TINY_MODEL, run_spawned
from shard_fixtures import write_random_shards


class _Bound(Exception):
    """Stops a call after its arguments bound: the callee needs components absent here."""


def _tiny_config(extra=()):
    from redi_megatron.config import load_config

    return load_config(None, TINY_MODEL + list(extra))


def _transformer_config(accelerators, precision="fp32", fp8=None):
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.model import transformer_config

    config = _tiny_config()
    arch = architecture_from_model_config(config.model)
    return transformer_config(arch, config.parallel, config.model, accelerators, precision, fp8)


def _gpu_with_te():
    from redi_megatron.runtime import Accelerators

    return Accelerators(cuda=True, transformer_engine=True, apex=False)


def test_transformer_engine_layer_spec_call_binds(monkeypatch):
    from megatron.core.models.gpt import gpt_layer_specs

    from redi_megatron.qwen import model as qwen_model

    real = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec

    def bind_and_stop(*args, **kwargs):
        inspect.signature(real).bind(*args, **kwargs)
        raise _Bound(args, kwargs)

    monkeypatch.setattr(qwen_model, "get_gpt_layer_with_transformer_engine_spec", bind_and_stop)
    accelerators = _gpu_with_te()
    tconfig = _transformer_config(accelerators, "bf16", "hybrid")
    with pytest.raises(_Bound) as bound:
        qwen_model.layer_spec(tconfig, accelerators)
    args, kwargs = bound.value.args
    arguments = inspect.signature(real).bind(*args, **kwargs)
    arguments.apply_defaults()
    # A Qwen2 layer: dense MLP, plain attention without QK norm.
    assert arguments.arguments["num_experts"] is None
    assert arguments.arguments["qk_layernorm"] is False
    assert arguments.arguments["multi_latent_attention"] is False
    assert arguments.arguments.get("qk_l2_norm", False) is False
    # TE's fused LayerNorm-linear modules take RMSNorm and the QKV bias from the config.
    assert tconfig.transformer_impl == "transformer_engine"
    assert tconfig.normalization == "RMSNorm" and tconfig.add_qkv_bias
    assert tconfig.gated_linear_unit and not tconfig.add_bias_linear


def test_transformer_engine_layer_spec_builds_qwen_layers():
    pytest.importorskip("transformer_engine.pytorch")
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear, TENorm
    from megatron.core.transformer.identity_op import IdentityOp

    from redi_megatron.qwen.model import layer_spec

    accelerators = _gpu_with_te()
    block = layer_spec(_transformer_config(accelerators, "bf16"), accelerators)
    attention = block.layer_specs[0].submodules.self_attention.submodules
    assert attention.linear_qkv is TELayerNormColumnParallelLinear
    assert attention.q_layernorm is IdentityOp and attention.k_layernorm is IdentityOp
    assert block.layer_norm is TENorm


# (module, attribute, recorded name): megatron-core callables as redi_megatron's modules see them.
_RECORDED = (
    ("megatron.core.parallel_state", "initialize_model_parallel", "initialize_model_parallel"),
    ("redi_megatron.qwen.model", "TransformerConfig", "TransformerConfig"),
    ("redi_megatron.qwen.model", "get_gpt_layer_local_spec", "get_gpt_layer_local_spec"),
    ("redi_megatron.engine", "DistributedDataParallelConfig", "DistributedDataParallelConfig"),
    ("redi_megatron.engine", "DistributedDataParallel", "DistributedDataParallel"),
    ("redi_megatron.engine", "OptimizerConfig", "OptimizerConfig"),
    ("redi_megatron.engine", "get_megatron_optimizer", "get_megatron_optimizer"),
    ("redi_megatron.engine", "OptimizerParamScheduler", "OptimizerParamScheduler"),
    ("megatron.core.dist_checkpointing", "save", "dist_checkpointing.save"),
    ("megatron.core.dist_checkpointing", "load", "dist_checkpointing.load"),
    ("megatron.core.dist_checkpointing", "load_common_state_dict",
     "dist_checkpointing.load_common_state_dict"),
)


def _binding(original, name, calls, signature_of=None):
    """Returns ``original`` wrapped to bind each call against its signature and record it."""
    signature = inspect.signature(signature_of or original)

    def bound_call(*args, **kwargs):
        signature.bind(*args, **kwargs)
        calls.append((name, kwargs))
        return original(*args, **kwargs)

    return bound_call


def _install_recorders(calls):
    import importlib

    from megatron.core.models.gpt import GPTModel

    from redi_megatron import training_step
    from redi_megatron.qwen.model import QwenGPTModel

    for module_name, attribute, name in _RECORDED:
        module = importlib.import_module(module_name)
        setattr(module, attribute, _binding(getattr(module, attribute), name, calls))
    QwenGPTModel.__init__ = _binding(GPTModel.__init__, "GPTModel.__init__", calls)
    schedule_for = training_step.get_forward_backward_func
    training_step.get_forward_backward_func = lambda *args, **kwargs: _binding(
        schedule_for(*args, **kwargs), "forward_backward_func", calls)


def _schedule_kwargs_bind_to_every_schedule(calls):
    from megatron.core.pipeline_parallel import schedules

    recorded = [kwargs for name, kwargs in calls if name == "forward_backward_func"]
    assert recorded, "the run made no pipeline-schedule call"
    for schedule in (schedules.forward_backward_no_pipelining,
                     schedules.forward_backward_pipelining_without_interleaving,
                     schedules.forward_backward_pipelining_with_interleaving):
        for kwargs in recorded:
            inspect.signature(schedule).bind(**kwargs)


def _recorded_run(rank, world_size, data, workdir, results):
    import torch

    from redi_megatron.training import train

    calls = []
    _install_recorders(calls)
    settings = [f"data.path={data}", "data.seq_length=32", "data.micro_batch_size=2",
                "data.global_batch_size=4", "train.precision=fp32", "train.train_steps=2",
                f"checkpoint.save={workdir}", "checkpoint.save_interval=1"]
    train(_tiny_config(settings + ["train.max_steps=1"]))
    train(_tiny_config(settings))  # resumes from step 1
    _schedule_kwargs_bind_to_every_schedule(calls)
    torch.save(sorted({name for name, _ in calls}), results)


@pytest.mark.timeout(300)
def test_every_megatron_call_of_a_run_binds(tmp_path):
    import torch

    data = write_random_shards(tmp_path / "sft", "sft", count=8)
    results = str(tmp_path / "recorded.pt")
    run_spawned(_recorded_run, 1, data, str(tmp_path / "ckpt"), results,
                error_dir=str(tmp_path / "errors"))
    # Each recorded API was reached, so its binding was checked (the common-state read is bound
    # when the checkpoint code uses it).
    expected = {name for _, _, name in _RECORDED} | {"GPTModel.__init__", "forward_backward_func"}
    expected.discard("dist_checkpointing.load_common_state_dict")
    assert expected <= set(torch.load(results))
    assert os.path.isfile(tmp_path / "ckpt" / "iter_0000002" / "metadata.json")
