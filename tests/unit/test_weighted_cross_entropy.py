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


PADDED_VOCAB = 64


def _padded_inputs(seed=1):
    """Returns inputs whose weight has PADDED_VOCAB rows of which the first VOCAB are real ids.

    The padded rows are random, not zero, so that any of them entering the softmax shows.
    """
    hidden, weight, labels, weights = _inputs(seed=seed)
    extra = torch.randn(PADDED_VOCAB - VOCAB, HIDDEN, generator=torch.Generator().manual_seed(9))
    padded = torch.cat([weight.detach(), extra]).requires_grad_()
    return hidden, padded, labels, weights


def _padded_paths(hidden, weight, labels, weights, **options):
    """Returns {path: (log-probs, loss to differentiate)} of every loss-head path."""
    from redi_megatron import weighted_cross_entropy as wce

    fused = wce.vocab_parallel_token_logprobs(hidden, weight, labels, chunk_size=8,
                                              vocab_size=VOCAB, **options)
    unfused = wce.unfused_token_logprobs(hidden, weight, labels, vocab_size=VOCAB)
    loss, logp = wce.weighted_token_nll_and_logprobs(hidden, weight, labels, weights,
                                                     chunk_size=8, vocab_size=VOCAB, **options)
    return {"fused": (fused, -(weights * fused).sum()),
            "unfused": (unfused, -(weights * unfused).sum()),
            "weighted": (logp, loss)}


def test_padded_vocab_rows_stay_out_of_the_softmax_and_get_zero_gradient():
    hidden, weight, labels, weights = _padded_inputs()
    real = weight.detach()[:VOCAB].clone().requires_grad_()
    expected = _reference_logprobs(hidden, real, labels)
    expected_grads = _grads(-(weights * expected).sum(), hidden, real)
    computed = weights != 0
    for path, (logp, loss) in _padded_paths(hidden, weight, labels, weights).items():
        if path == "weighted":
            _assert_close(logp[computed], expected[computed])
        else:
            _assert_close(logp, expected)
        grad_hidden, grad_weight = _grads(loss, hidden, weight)
        assert torch.all(grad_weight[VOCAB:] == 0), path
        _assert_close(grad_hidden, expected_grads[0])
        _assert_close(grad_weight[:VOCAB], expected_grads[1])


@pytest.mark.parametrize("path", ["fused", "weighted", "unfused"])
def test_labels_of_padded_ids_raise(path):
    from redi_megatron import weighted_cross_entropy as wce

    hidden, weight, labels, weights = _padded_inputs()
    labels[0, 3] = VOCAB
    calls = {
        "fused": lambda: wce.vocab_parallel_token_logprobs(hidden, weight, labels,
                                                           vocab_size=VOCAB),
        "weighted": lambda: wce.weighted_token_nll(hidden, weight, labels, weights,
                                                   vocab_size=VOCAB),
        "unfused": lambda: wce.unfused_token_logprobs(hidden, weight, labels, vocab_size=VOCAB),
    }
    with pytest.raises(ValueError, match=rf"1 label\(s\) outside \[0, {VOCAB}\)"):
        calls[path]()


def test_weighted_path_returns_the_log_probs_it_computes():
    from redi_megatron.weighted_cross_entropy import (weighted_token_nll,
                                                      weighted_token_nll_and_logprobs)

    hidden, weight, labels, weights = _inputs()
    # Row 1 asks for log-probs at weight 0 (REDI's rejected trace at alpha = 0).
    weights[1] = 0.0
    mask = torch.zeros_like(weights, dtype=torch.bool)
    mask[:, 6:] = True
    loss, logp = weighted_token_nll_and_logprobs(hidden, weight, labels, weights,
                                                 logprob_mask=mask, chunk_size=5)
    expected = _reference_logprobs(hidden, weight, labels)
    assert not logp.requires_grad and logp.dtype == torch.float32
    _assert_close(logp[mask], expected[mask])
    assert torch.all(logp[~mask] == 0)
    plain = weighted_token_nll(hidden, weight, labels, weights, chunk_size=5)
    _assert_close(loss, plain)
    grads = _grads(loss, hidden, weight)
    for actual, reference in zip(grads, _grads(plain, hidden, weight)):
        _assert_close(actual, reference)
    assert torch.all(grads[0][:, 1] == 0)


def test_model_dtype_gemm_branch_matches_fp32_within_bf16_rounding():
    """The GPU branch (bf16 GEMMs, fp32 accumulation and softmax), forced on CPU."""
    from redi_megatron.weighted_cross_entropy import _VocabShard

    hidden, weight, labels, weights = _padded_inputs()
    hidden = hidden.detach().to(torch.bfloat16).requires_grad_()
    weight = weight.detach().to(torch.bfloat16).requires_grad_()
    # fp32 reference on the same bf16-rounded values.
    hidden32 = hidden.detach().float().requires_grad_()
    real32 = weight.detach()[:VOCAB].float().requires_grad_()
    expected = _reference_logprobs(hidden32, real32, labels)
    expected_grads = _grads(-3 * (weights * expected).sum(), hidden32, real32)

    group = torch.distributed.group.WORLD
    assert _VocabShard(weight, group, VOCAB, True).weight.data_ptr() == weight.data_ptr()
    computed = weights != 0
    for path, (logp, loss) in _padded_paths(hidden, weight, labels, weights,
                                            low_precision=True).items():
        if path == "unfused":
            continue
        # Logits are exact products of bf16 values summed in fp32: log-probs stay fp32-accurate.
        _assert_close(logp[computed], expected[computed])
        grad_hidden, grad_weight = _grads(3 * loss, hidden, weight)
        assert grad_hidden.dtype == grad_weight.dtype == torch.bfloat16
        assert torch.all(grad_weight[VOCAB:] == 0), path
        # The softmax gradient is rounded to bf16 before the GEMMs (relative 2^-9 per element).
        torch.testing.assert_close(grad_hidden.float(), expected_grads[0], rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(grad_weight[:VOCAB].float(), expected_grads[1], rtol=2e-2,
                                   atol=2e-3)
