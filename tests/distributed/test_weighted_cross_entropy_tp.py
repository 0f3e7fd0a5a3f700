"""weighted_cross_entropy at TP=2 and TP=2 + sequence parallel (gloo) vs single-process references.

All checks run inside one spawned job: process start and the megatron import dominate the cost.
"""

import pytest
import torch

from harness import run_spawned

TP = 2
SEQ, BATCH, HIDDEN, VOCAB = 38, 2, 16, 64
CHUNK = 7


def _reference_logprobs(hidden, weight, labels):
    """Returns [b, s] log p(labels) from the full fp32 softmax."""
    logits = hidden.float().transpose(0, 1) @ weight.float().t()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def _full_problem():
    """Returns full hidden [s, b, h], weight [V, h], labels and weights, the same on every rank."""
    generator = torch.Generator().manual_seed(1234)
    hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=generator)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    # Ids at both ends of each rank's shard.
    labels[0, :4] = torch.tensor([0, VOCAB // TP - 1, VOCAB // TP, VOCAB - 1])
    weights = torch.cat([torch.full((1, SEQ), 1 / SEQ), torch.full((1, SEQ), -0.8 / SEQ)])
    weights[:, :5] = 0.0
    return hidden, weight, labels, weights


def _local_inputs(hidden, weight, rank, sequence_parallel):
    """Returns this rank's (hidden input, weight shard) as fresh leaves."""
    seq_shard, vocab_shard = SEQ // TP, VOCAB // TP
    local_hidden = hidden[rank * seq_shard:(rank + 1) * seq_shard] if sequence_parallel else hidden
    local_weight = weight[rank * vocab_shard:(rank + 1) * vocab_shard]
    return local_hidden.clone().requires_grad_(), local_weight.clone().requires_grad_()


def _check_layout(rank, sequence_parallel, problem, reference, group):
    from redi_megatron import weighted_cross_entropy as wce

    hidden, weight, labels, weights = problem
    expected_logp, expected_grad_hidden, expected_grad_weight = reference
    seq_shard, vocab_shard = SEQ // TP, VOCAB // TP
    if sequence_parallel:
        expected_grad_hidden = expected_grad_hidden[rank * seq_shard:(rank + 1) * seq_shard]
    expected_grad_weight = expected_grad_weight[rank * vocab_shard:(rank + 1) * vocab_shard]
    layout = f"TP={TP} sp={sequence_parallel}"

    paths = {
        "fused": lambda h, w: wce.vocab_parallel_token_logprobs(
            h, w, labels, chunk_size=CHUNK, sequence_parallel=sequence_parallel, tp_group=group),
        "unfused": lambda h, w: wce.unfused_token_logprobs(
            h, w, labels, sequence_parallel=sequence_parallel),
    }
    results = {}
    for name, path in paths.items():
        local_hidden, local_weight = _local_inputs(hidden, weight, rank, sequence_parallel)
        logp = path(local_hidden, local_weight)
        grads = torch.autograd.grad(-(weights * logp).sum(), (local_hidden, local_weight))
        results[name] = (logp.detach(), *grads)
        _assert_close(logp, expected_logp, f"{layout} {name} logp")
        _assert_close(grads[0], expected_grad_hidden, f"{layout} {name} grad hidden")
        _assert_close(grads[1], expected_grad_weight, f"{layout} {name} grad weight")
    for fused, unfused, what in zip(results["fused"], results["unfused"],
                                    ("logp", "grad hidden", "grad weight")):
        _assert_close(fused, unfused, f"{layout} fused vs unfused {what}")

    local_hidden, local_weight = _local_inputs(hidden, weight, rank, sequence_parallel)
    loss = wce.weighted_token_nll(local_hidden, local_weight, labels, weights, chunk_size=CHUNK,
                                  sequence_parallel=sequence_parallel)
    grads = torch.autograd.grad(loss, (local_hidden, local_weight))
    _assert_close(loss, -(weights * expected_logp).sum(), f"{layout} weighted nll")
    _assert_close(grads[0], expected_grad_hidden, f"{layout} weighted nll grad hidden")
    _assert_close(grads[1], expected_grad_weight, f"{layout} weighted nll grad weight")


def _check_out_of_range_uses_full_vocab(rank):
    from redi_megatron.weighted_cross_entropy import vocab_parallel_token_logprobs

    hidden, weight, labels, _ = _full_problem()
    local_hidden, local_weight = _local_inputs(hidden, weight, rank, False)
    labels[0, 0] = VOCAB
    with pytest.raises(ValueError, match=rf"1 label\(s\) outside \[0, {VOCAB}\)"):
        vocab_parallel_token_logprobs(local_hidden, local_weight, labels)


def _check_padded_vocab(rank, vocab_size):
    """The last VOCAB - vocab_size rows are padding (random, so that any leak shows)."""
    from redi_megatron import weighted_cross_entropy as wce

    hidden, weight, labels, weights = _full_problem()
    labels = labels % vocab_size
    real = weight[:vocab_size].clone().requires_grad_()
    full_hidden = hidden.clone().requires_grad_()
    expected = _reference_logprobs(full_hidden, real, labels)
    expected_grad_hidden, expected_grad_real = torch.autograd.grad(-(weights * expected).sum(),
                                                                   (full_hidden, real))
    vocab_shard = VOCAB // TP
    start = rank * vocab_shard
    owned_real = max(min(vocab_size - start, vocab_shard), 0)
    layout = f"TP={TP} vocab {vocab_size} of {VOCAB}"
    paths = {
        "fused": lambda h, w: -(weights * wce.vocab_parallel_token_logprobs(
            h, w, labels, chunk_size=CHUNK, vocab_size=vocab_size)).sum(),
        "unfused": lambda h, w: -(weights * wce.unfused_token_logprobs(
            h, w, labels, vocab_size=vocab_size)).sum(),
        "weighted": lambda h, w: wce.weighted_token_nll(h, w, labels, weights, chunk_size=CHUNK,
                                                        vocab_size=vocab_size),
    }
    for name, path in paths.items():
        local_hidden, local_weight = _local_inputs(hidden, weight, rank, False)
        loss = path(local_hidden, local_weight)
        grad_hidden, grad_weight = torch.autograd.grad(loss, (local_hidden, local_weight))
        _assert_close(loss, -(weights * expected).sum(), f"{layout} {name} loss")
        _assert_close(grad_hidden, expected_grad_hidden, f"{layout} {name} grad hidden")
        _assert_close(grad_weight[:owned_real], expected_grad_real[start:start + owned_real],
                      f"{layout} {name} grad weight")
        assert torch.all(grad_weight[owned_real:] == 0), f"{layout} {name}: padded rows' grad"


def _worker(rank, world_size):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from redi_megatron.config import ParallelConfig
    from redi_megatron.runtime import init_parallel_state

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    init_parallel_state(ParallelConfig(tensor=TP), seed=0)
    problem = _full_problem()
    hidden, weight, labels, weights = problem
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp = _reference_logprobs(hidden, weight, labels)
    reference = (logp.detach(), *torch.autograd.grad(-(weights * logp).sum(), (hidden, weight)))
    # The explicit group in the fused SP call checks that tp_group is honoured.
    _check_layout(rank, False, problem, reference, None)
    _check_layout(rank, True, problem, reference,
                  parallel_state.get_tensor_model_parallel_group())
    _check_out_of_range_uses_full_vocab(rank)
    # Rank 1's rows: some real, then none at all.
    _check_padded_vocab(rank, VOCAB - 20)
    _check_padded_vocab(rank, VOCAB // TP - 3)


@pytest.mark.timeout(120)
def test_tensor_and_sequence_parallel_match_single_process_reference(tmp_path):
    run_spawned(_worker, TP, error_dir=str(tmp_path / "errors"))
