"""Log-probs of a converted Qwen2 equal transformers' whatever the padding of its vocabulary.

Vocab 600 pads to 640 at TP=1 and to 768 at TP=2 (``make_vocab_size_divisible_by`` 128 x TP), so
a softmax over the padded rows would give different log-probs at each layout. One process
converts a tiny untied Qwen2 (TP=2 target) and runs the loss head at TP=1, two processes at
TP=2; every path (fused, unfused, gradient-in-forward) must give the Hugging Face model's
log-probs, and the padded rows of the output weight exactly zero gradient.
"""

import pytest
import torch
from harness import run_spawned

from test_qwen_state_dict_mapping import tiny_qwen

pytestmark = pytest.mark.timeout(300)
VOCAB = 600
PADDED = {1: 640, 2: 768}
TOLERANCE = 1e-5  # fp32; measured 4.8e-7


def _problem():
    """Returns (tokens, labels, token weights) [2, 24], the same in every process."""
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=generator)
    # Ids next to the padding and at both ends of each TP=2 shard (384 ids of 768).
    tokens[0, :5] = torch.tensor([0, 383, 384, VOCAB - 2, VOCAB - 1])
    weights = (torch.rand(2, 24, generator=generator) + 0.1) / 24
    return tokens, torch.roll(tokens, -1, dims=1), weights


def _loss_head_paths(work, tp):
    """Saves {path: (log-probs, sum of |gradient| over this rank's padded rows)}, at TP=``tp``."""
    from megatron.core import parallel_state

    from redi_megatron import runtime
    from redi_megatron import weighted_cross_entropy as wce
    from redi_megatron.checkpointing import load_checkpoint
    from redi_megatron.config import ModelConfig, ParallelConfig
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.megatron_checkpoint_io import CPU
    from redi_megatron.qwen.model import build_model_chunks, transformer_config

    runtime.init_distributed(CPU)
    parallel = ParallelConfig(tensor=tp)
    runtime.init_parallel_state(parallel, seed=1)
    model_config = ModelConfig(hf_config=f"{work}/ckpt/hf_source")
    arch = architecture_from_model_config(model_config)
    assert arch.vocab_size == VOCAB
    padded = arch.padded_vocab_size(128, tp)
    assert padded == PADDED[tp]
    chunks = build_model_chunks(arch, transformer_config(arch, parallel, model_config, CPU, "fp32"),
                                CPU, padded)
    load_checkpoint(f"{work}/ckpt", chunks, weights_only=True)
    model = chunks[0].eval()
    tokens, labels, weights = _problem()
    with torch.no_grad():
        hidden = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)

    real = VOCAB - parallel_state.get_tensor_model_parallel_rank() * padded // tp
    paths = {
        "fused": lambda h, w: wce.vocab_parallel_token_logprobs(h, w, labels, chunk_size=16,
                                                                vocab_size=VOCAB),
        "unfused": lambda h, w: wce.unfused_token_logprobs(h, w, labels, vocab_size=VOCAB),
        "weighted": lambda h, w: wce.weighted_token_nll_and_logprobs(
            h, w, labels, weights, chunk_size=16, vocab_size=VOCAB),
        "softmax over the padding": lambda h, w: wce.vocab_parallel_token_logprobs(h, w, labels),
    }
    results = {}
    for name, path in paths.items():
        leaf_hidden = hidden.clone().requires_grad_()
        weight = model.output_weight().detach().clone().requires_grad_()
        out = path(leaf_hidden, weight)
        loss, logp = out if name == "weighted" else (-(weights * out).sum(), out)
        (grad_weight,) = torch.autograd.grad(loss, (weight,))
        results[name] = (logp.detach(), grad_weight[real:].abs().sum().item())
    if torch.distributed.get_rank() == 0:
        torch.save(results, f"{work}/tp{tp}.pt")
    return results


def _convert_and_run_tp1(rank, world_size, work):
    from redi_megatron.config import ParallelConfig
    from redi_megatron.qwen.conversion import convert_hf_to_megatron

    convert_hf_to_megatron(f"{work}/hf", f"{work}/ckpt", ParallelConfig(tensor=2), torch.float32,
                           progress=lambda _: None)
    _loss_head_paths(work, 1)


def _run_tp2(rank, world_size, work):
    results = _loss_head_paths(work, 2)
    # Rank 1 holds the padding (ids 600-767); rank 0's grad check covers no padded row.
    if rank == 1:
        torch.save(results, f"{work}/tp2_rank1.pt")


def test_log_probs_equal_transformers_at_tp1_and_tp2(tmp_path):
    from transformers import AutoModelForCausalLM

    work = str(tmp_path)
    tiny_qwen(tmp_path / "hf", tied=False, vocab_size=VOCAB)
    tokens, labels, _ = _problem()
    model = AutoModelForCausalLM.from_pretrained(f"{work}/hf", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    run_spawned(_convert_and_run_tp1, 1, work, error_dir=f"{work}/errors1")
    run_spawned(_run_tp2, 2, work, error_dir=f"{work}/errors2")
    tp1, tp2 = torch.load(f"{work}/tp1.pt"), torch.load(f"{work}/tp2.pt")
    padded_rank = torch.load(f"{work}/tp2_rank1.pt")
    for layout, results in (("TP=1", tp1), ("TP=2", tp2)):
        for path in ("fused", "unfused", "weighted"):
            logp, _ = results[path]
            print(f"{layout} {path}: max |logp - HF| {(logp - expected).abs().max():.2e}")
            torch.testing.assert_close(logp, expected, rtol=0, atol=TOLERANCE,
                                       msg=lambda m: f"{layout} {path}: {m}")
    for path in ("fused", "unfused", "weighted"):
        torch.testing.assert_close(tp2[path][0], tp1[path][0], rtol=0, atol=1e-5)
        assert tp1[path][1] == 0, f"TP=1 {path}: padded rows 600-639 got gradient"
        assert padded_rank[path][1] == 0, f"TP=2 {path}: padded rows 600-767 got gradient"
    # The check has teeth: a softmax over the padded rows (zero logits) moves the log-probs.
    for layout, results in (("TP=1", tp1), ("TP=2", tp2)):
        print(f"{layout} softmax over the padding: max |logp - HF| "
              f"{(results['softmax over the padding'][0] - expected).abs().max():.2e}")
        assert (results["softmax over the padding"][0] - expected).abs().max() > 10 * TOLERANCE
    assert padded_rank["softmax over the padding"][1] > 0
