"""HF Qwen2 <-> Megatron tensor mapping, streamed safetensors I/O, and the converter's input checks."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from redi_megatron.config import ConfigError, ParallelConfig
from redi_megatron.qwen import state_dict_mapping as mapping
from redi_megatron.qwen.architecture import architecture_from_hf_config, read_hf_config
from redi_megatron.qwen.hf_checkpoint_io import (CheckpointFormatError, SafetensorsReader,
                                                 ShardedSafetensorsWriter, TensorSpec, plan_shards)

pytestmark = pytest.mark.timeout(120)


def tiny_qwen(directory, tied: bool, max_shard_size=None, **overrides):
    """Returns the path of a saved random tiny Qwen2 (GQA with 2 KV groups, vocab needing padding)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    values = dict(vocab_size=1001, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=tied,
                  max_position_embeddings=256)
    values.update(overrides)
    model = Qwen2ForCausalLM(Qwen2Config(**values))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return str(directory)


def hf_state(directory):
    reader = SafetensorsReader(directory)
    return {name: reader.read(name) for name in reader.entries}


@pytest.mark.parametrize("tied", [True, False])
def test_group_round_trip_is_bitwise(tmp_path, tied):
    directory = tiny_qwen(tmp_path, tied)
    arch = architecture_from_hf_config(read_hf_config(directory))
    state = hf_state(directory)
    padded = arch.padded_vocab_size(128, 2)
    assert padded == 1024
    back = {}
    for group in mapping.tensor_groups(arch):
        shapes = mapping.hf_shapes(arch, group)
        mcore = mapping.megatron_group(arch, group, {n: state[n] for n in shapes}, padded)
        assert sorted(mcore) == sorted(mapping.megatron_names(arch, group))
        back.update(mapping.hf_group(arch, group, mcore))
    assert sorted(back) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_hf_shapes_name_every_tensor_of_a_transformers_model(tmp_path):
    directory = tiny_qwen(tmp_path, tied=False)
    arch = architecture_from_hf_config(read_hf_config(directory))
    expected = {}
    for group in mapping.tensor_groups(arch):
        expected.update(mapping.hf_shapes(arch, group))
    assert {n: e.shape for n, e in SafetensorsReader(directory).entries.items()} == expected


def test_qkv_is_interleaved_per_query_group():
    from redi_megatron.qwen.architecture import QwenArchitecture

    arch = QwenArchitecture(hidden_size=8, num_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=4, vocab_size=10,
                            rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=16,
                            tie_word_embeddings=True)
    d = arch.head_dim  # 2
    q = torch.arange(8.0) + 100  # heads 0..3, two rows each
    k = torch.arange(4.0) + 200
    v = torch.arange(4.0) + 300
    fused = mapping.interleave_qkv(q, k, v, arch)
    expected = torch.cat([q[:2 * d], k[:d], v[:d], q[2 * d:], k[d:], v[d:]])
    assert torch.equal(fused, expected)
    assert all(torch.equal(a, b) for a, b in zip(mapping.split_qkv(fused, arch), (q, k, v)))


def test_vocab_padding_rows_are_zero():
    weight = torch.randn(5, 3)
    padded = mapping.pad_vocab(weight, 8)
    assert padded.shape == (8, 3) and torch.equal(padded[:5], weight)
    assert not padded[5:].any()


def test_reader_and_streaming_writer_match_transformers_shards(tmp_path):
    directory = tiny_qwen(tmp_path / "hf", tied=False, max_shard_size="100KB")
    assert os.path.isfile(os.path.join(directory, "model.safetensors.index.json"))
    state = hf_state(directory)
    specs = [TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in state.items()]
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardedSafetensorsWriter(str(out), specs, max_shard_bytes=150_000)
    assert len(writer.files) == len(plan_shards(specs, 150_000)) > 1
    for name, tensor in state.items():
        writer.write(name, tensor)
    writer.close()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    loaded = {}
    for file in set(index["weight_map"].values()):
        loaded.update(load_file(str(out / file)))
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[n], state[n]) for n in state)


def test_writer_rejects_a_tensor_out_of_plan(tmp_path):
    writer = ShardedSafetensorsWriter(str(tmp_path), [TensorSpec("a", torch.float32, (2,))], 1 << 20)
    with pytest.raises(CheckpointFormatError, match="a .* was planned"):
        writer.write("a", torch.zeros(3))


# --- bad input: checked before anything is written --------------------------------------------

def _convert(hf_dir, out, **kwargs):
    from redi_megatron.qwen.conversion import convert_hf_to_megatron

    return convert_hf_to_megatron(hf_dir, str(out), kwargs.pop("parallel", ParallelConfig()),
                                  progress=lambda _: None, **kwargs)


def test_missing_shard_names_the_file(tmp_path):
    directory = tiny_qwen(tmp_path / "hf", tied=True, max_shard_size="100KB")
    index = json.loads(open(os.path.join(directory, "model.safetensors.index.json")).read())
    victim = sorted(set(index["weight_map"].values()))[-1]
    os.remove(os.path.join(directory, victim))
    with pytest.raises(CheckpointFormatError, match=f"{victim}.*missing"):
        _convert(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_the_tensor(tmp_path):
    directory = tiny_qwen(tmp_path / "hf", tied=True)
    config_path = os.path.join(directory, "config.json")
    config = json.loads(open(config_path).read())
    config["intermediate_size"] = 128
    open(config_path, "w").write(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight"):
        _convert(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_architecture_is_refused(tmp_path):
    directory = tmp_path / "llama"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        _convert(str(directory), tmp_path / "out")


def test_tensor_parallel_must_divide_heads(tmp_path):
    directory = tiny_qwen(tmp_path / "hf", tied=True)
    with pytest.raises(ConfigError, match="parallel.tensor=3 must divide"):
        _convert(directory, tmp_path / "out", parallel=ParallelConfig(tensor=3))


def test_overrides_reach_the_recorded_config(tmp_path):
    from redi_megatron.qwen.conversion import source_config

    directory = tiny_qwen(tmp_path / "hf", tied=True, rope_theta=5000.0)
    config = source_config(directory, {"rope_theta": 300000, "max_position_embeddings": 512})
    arch = architecture_from_hf_config(config)
    assert arch.rope_theta == 300000 and arch.max_position_embeddings == 512
    assert config["rope_parameters"]["rope_theta"] == 300000
    assert architecture_from_hf_config(source_config(directory)).rope_theta == 5000.0
    with pytest.raises(ConfigError, match="vocab_size"):
        source_config(directory, {"vocab_size": 7})
