"""weighted_cross_entropy at TP=1: values and gradients vs a full-softmax torch reference."""

import os
import socket

import pytest
import torch
import torch.distributed as dist

SEQ, BATCH, HIDDEN, VOCAB = 37, 2, 16, 50


@pytest.fixture(scope="module", autouse=True)
def tensor_parallel_world_of_one():
    """A gloo world of one process with megatron's parallel state at TP=1, torn down after."""
    from megatron.core import parallel_state

    from redi_megatron.config import ParallelConfig
    from redi_megatron.runtime import init_parallel_state

    created = not dist.is_initialized()
    if created:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
    init_parallel_state(ParallelConfig(tensor=1), seed=0)
    yield
    parallel_state.destroy_model_parallel()
    if created:
        dist.destroy_process_group()


def _inputs(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    labels[0, :2] = torch.tensor([0, VOCAB - 1])
    # REDI-like weights: a zero prompt, then positive on row 0 and negative on row 1.
    weights = torch.cat([torch.full((1, SEQ), 1 / SEQ), torch.full((1, SEQ), -0.8 / SEQ)])
    weights[:, :6] = 0.0
    return hidden, weight, labels, weights


def _reference_logprobs(hidden, weight, labels):
    """Returns [b, s] log p(labels) from the full fp32 softmax."""
    logits = hidden.float().transpose(0, 1) @ weight.float().t()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _grads(value, hidden, weight):
    return torch.autograd.grad(value, (hidden, weight))


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [5, 1024])
@pytest.mark.parametrize("path", ["fused", "unfused"])
def test_token_logprobs_match_reference(path, chunk_size):
    from redi_megatron.weighted_cross_entropy import (
        unfused_token_logprobs,
        vocab_parallel_token_logprobs,
    )

    hidden, weight, labels, weights = _inputs()
    expected = _reference_logprobs(hidden, weight, labels)
    if path == "fused":
        logp = vocab_parallel_token_logprobs(hidden, weight, labels, chunk_size=chunk_size)
    else:
        logp = unfused_token_logprobs(hidden, weight, labels)
    assert logp.shape == (BATCH, SEQ) and logp.dtype == torch.float32
    _assert_close(logp, expected)
    for actual, reference in zip(_grads((logp * weights).sum(), hidden, weight),
                                 _grads((expected * weights).sum(), hidden, weight)):
        _assert_close(actual, reference)


@pytest.mark.parametrize("chunk_size", [5, 1024])
def test_weighted_nll_matches_reference(chunk_size):
    from redi_megatron.weighted_cross_entropy import weighted_token_nll

    hidden, weight, labels, weights = _inputs()
    expected = -(weights * _reference_logprobs(hidden, weight, labels)).sum()
    loss = weighted_token_nll(hidden, weight, labels, weights, chunk_size=chunk_size)
    assert loss.shape == () and loss.dtype == torch.float32
    _assert_close(loss, expected)
    # A non-unit upstream gradient checks the backward's scaling.
    for actual, reference in zip(_grads(3 * loss, hidden, weight),
                                 _grads(3 * expected, hidden, weight)):
        _assert_close(actual, reference)


def test_zero_weight_tokens_contribute_exactly_nothing():
    from redi_megatron.weighted_cross_entropy import (
        vocab_parallel_token_logprobs,
        weighted_token_nll,
    )

    hidden, weight, labels, weights = _inputs()
    prompt = weights.t() == 0
    loss = weighted_token_nll(hidden, weight, labels, weights, chunk_size=4)
    grad_hidden, grad_weight = _grads(loss, hidden, weight)
    assert torch.all(grad_hidden[prompt] == 0)
    logp = vocab_parallel_token_logprobs(hidden, weight, labels, chunk_size=4)
    assert torch.all(_grads((logp * weights).sum(), hidden, weight)[0][prompt] == 0)

    # Garbage (NaN) hidden states at weight-0 positions must not reach the loss or any gradient.
    poisoned = hidden.detach().clone()
    poisoned[prompt] = float("nan")
    poisoned.requires_grad_()
    poisoned_loss = weighted_token_nll(poisoned, weight, labels, weights, chunk_size=4)
    poisoned_grads = _grads(poisoned_loss, poisoned, weight)
    assert torch.equal(poisoned_loss, loss)
    assert torch.equal(poisoned_grads[0], grad_hidden)
    assert torch.equal(poisoned_grads[1], grad_weight)


def test_bf16_inputs_are_computed_in_fp32_and_grads_returned_in_bf16():
    from redi_megatron.weighted_cross_entropy import (
        vocab_parallel_token_logprobs,
        weighted_token_nll,
    )

    hidden, weight, labels, weights = _inputs(torch.bfloat16)
    hidden32 = hidden.detach().float().requires_grad_()
    weight32 = weight.detach().float().requires_grad_()
    expected = _reference_logprobs(hidden32, weight32, labels)
    expected_grads = _grads(-(weights * expected).sum(), hidden32, weight32)

    logp = vocab_parallel_token_logprobs(hidden, weight, labels, chunk_size=8)
    assert logp.dtype == torch.float32
    _assert_close(logp, expected)
    loss = weighted_token_nll(hidden, weight, labels, weights, chunk_size=8)
    _assert_close(loss, -(weights * expected).sum())
    for grads in (_grads(-(weights * logp).sum(), hidden, weight), _grads(loss, hidden, weight)):
        for actual, reference in zip(grads, expected_grads):
            assert actual.dtype == torch.bfloat16
            torch.testing.assert_close(actual, reference.to(torch.bfloat16), rtol=1e-2, atol=1e-3)


def test_no_grad_gives_the_same_loss():
    from redi_megatron.weighted_cross_entropy import weighted_token_nll

    hidden, weight, labels, weights = _inputs()
    with torch.no_grad():
        loss = weighted_token_nll(hidden, weight, labels, weights, chunk_size=8)
    assert not loss.requires_grad
    _assert_close(loss, weighted_token_nll(hidden, weight, labels, weights, chunk_size=8))


@pytest.mark.parametrize("bad_label", [-100, VOCAB])
@pytest.mark.parametrize("path", ["fused", "weighted", "unfused"])
def test_out_of_range_labels_raise(path, bad_label):
    from redi_megatron import weighted_cross_entropy as wce

    hidden, weight, labels, weights = _inputs()
    labels[1, -3:] = bad_label
    calls = {
        "fused": lambda: wce.vocab_parallel_token_logprobs(hidden, weight, labels),
        "weighted": lambda: wce.weighted_token_nll(hidden, weight, labels, weights),
        "unfused": lambda: wce.unfused_token_logprobs(hidden, weight, labels),
    }
    message = rf"3 label\(s\) outside \[0, {VOCAB}\), e\.g\. {bad_label}"
    with pytest.raises(ValueError, match=message):
        calls[path]()


def test_mismatched_label_shape_raises():
    from redi_megatron.weighted_cross_entropy import vocab_parallel_token_logprobs

    hidden, weight, labels, _ = _inputs()
    with pytest.raises(ValueError, match="labels have shape"):
        vocab_parallel_token_logprobs(hidden, weight, labels.t())
