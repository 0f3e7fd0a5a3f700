"""SdpaAttention equals Megatron's local attention, transformers' Qwen2, and itself packed (fp32).

Each check runs in a spawned one-process gloo group (Megatron's attention needs its parallel
state): (a) the module against Megatron's DotProductAttention on random GQA q/k/v of 2,048 tokens,
outputs and input gradients; (b) a tiny Qwen2 converted to Megatron, run with model.attention
sdpa and local, against transformers' logits at 2,048 tokens; (c) several documents packed in one
THD row against each document alone through the padded path.
"""

import os

import pytest
import torch
from harness import run_spawned

from test_qwen_state_dict_mapping import tiny_qwen

pytestmark = pytest.mark.timeout(300)
TOKENS = 2048
TOLERANCE = 1e-5


def _attention_config(heads=4, groups=2, head_dim=16):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                             num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0,
                             hidden_dropout=0.0, masked_softmax_fusion=False,
                             use_cpu_initialization=True)


def _modules(config):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from redi_megatron.qwen.attention import SdpaAttention

    kwargs = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal,
                  attention_type="self")
    return SdpaAttention(**kwargs), DotProductAttention(**kwargs)


def _qkv(tokens, batch, heads, groups, head_dim, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(tokens, batch, heads, head_dim)] + [(tokens, batch, groups, head_dim)] * 2
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def _output_and_grads(module, q, k, v, **kwargs):
    out = module(q, k, v, None, **kwargs)
    generator = torch.Generator().manual_seed(7)
    out.backward(torch.randn(out.shape, generator=generator))
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return out.detach(), grads


def _check_against_megatron(rank, world_size):
    from redi_megatron.qwen.megatron_checkpoint_io import start_single_process

    start_single_process()
    sdpa, local = _modules(_attention_config())
    q, k, v = _qkv(TOKENS, 2, 4, 2, 16, seed=0)
    expected, expected_grads = _output_and_grads(local, q, k, v)
    actual, grads = _output_and_grads(sdpa, q, k, v)
    assert actual.shape == (TOKENS, 2, 64)
    torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=TOLERANCE)
    for name, got, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE,
                                   msg=lambda m, name=name: f"d{name}: {m}")


def test_matches_megatron_local_attention_at_2048_tokens(tmp_path):
    run_spawned(_check_against_megatron, 1, error_dir=str(tmp_path))


def _check_packed(rank, world_size):
    from megatron.core.packed_seq_params import PackedSeqParams

    from redi_megatron.qwen.megatron_checkpoint_io import start_single_process

    start_single_process()
    sdpa, _ = _modules(_attention_config())
    lengths, tail = [5, 300, 1, 0, 77, 129], 11
    bounds = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    unsqueezed_qkv = _qkv(int(bounds[-1]) + tail, 1, 4, 2, 16, seed=1)
    q, k, v = (t.detach().squeeze(1).requires_grad_() for t in unsqueezed_qkv)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=bounds, cu_seqlens_kv=bounds,
                             max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))
    # Megatron's SelfAttention hands THD tensors over as [t, heads, hn]; [t, 1, heads, hn] works too.
    packed, packed_grads = _output_and_grads(sdpa, q, k, v, packed_seq_params=params)
    unsqueezed, _ = _output_and_grads(sdpa, *unsqueezed_qkv, packed_seq_params=params)
    torch.testing.assert_close(unsqueezed, packed, rtol=0, atol=0)
    assert packed.shape == (q.shape[0], 64)
    assert torch.count_nonzero(packed[-tail:]) == 0

    # The reference: each document alone through the padded path, same output gradient.
    generator = torch.Generator().manual_seed(7)
    grad_out = torch.randn(packed.shape, generator=generator)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if start == end:
            continue
        doc = [t[start:end].detach().unsqueeze(1).requires_grad_() for t in (q, k, v)]
        out = sdpa(*doc, None)
        out.backward(grad_out[start:end].unsqueeze(1))
        torch.testing.assert_close(packed[start:end], out.detach()[:, 0], rtol=0, atol=1e-6)
        for name, whole, piece in zip("qkv", packed_grads, doc):
            torch.testing.assert_close(whole[start:end], piece.grad[:, 0], rtol=0, atol=1e-6,
                                       msg=lambda m, name=name: f"d{name} [{start}:{end}]: {m}")


def test_packed_rows_equal_each_document_alone(tmp_path):
    run_spawned(_check_packed, 1, error_dir=str(tmp_path))


def _check_converted_qwen2(rank, world_size, work):
    from transformers import Qwen2ForCausalLM

    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron
    from redi_megatron.qwen.logit_check import megatron_logits, sample_tokens

    hf_dir = tiny_qwen(os.path.join(work, "hf"), tied=False, max_position_embeddings=TOKENS)
    ckpt = os.path.join(work, "ckpt")
    convert_hf_to_megatron(hf_dir, ckpt, ParallelConfig(), torch.float32, progress=lambda _: None)
    tokens = sample_tokens(1001, batch=2, length=TOKENS)
    for implementation in ("eager", "sdpa"):
        model = Qwen2ForCausalLM.from_pretrained(hf_dir, attn_implementation=implementation).eval()
        with torch.no_grad():
            expected = model(input_ids=tokens).logits
        for attention in ("sdpa", "local"):
            actual = megatron_logits(ckpt, tokens, attention=attention)
            torch.testing.assert_close(actual, expected, rtol=TOLERANCE, atol=TOLERANCE,
                                       msg=lambda m: f"{attention} vs HF {implementation}: {m}")


def test_converted_qwen2_logits_equal_transformers_at_2048_tokens(tmp_path):
    run_spawned(_check_converted_qwen2, 1, str(tmp_path), error_dir=str(tmp_path / "errors"))
