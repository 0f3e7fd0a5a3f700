"""Objectives equal naive per-pair formulas on full-softmax log-probs, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from redi_megatron.config import LossConfig
from redi_megatron.objectives import (compute_objective, linear_token_weights,
                                      sequence_logprob_sums, summarize_stats)

ROWS, SEQ, VOCAB = 6, 12, 40


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(ROWS, SEQ, VOCAB, generator=g, dtype=torch.float32)
    labels = torch.randint(0, VOCAB, (ROWS, SEQ), generator=g)
    mask = torch.zeros(ROWS, SEQ, dtype=torch.float32)
    for row in range(ROWS):
        mask[row, 2 + row % 3: SEQ - row % 4] = 1.0
    ref = -torch.rand(ROWS, generator=g, dtype=torch.float32) * 20
    return logits, labels, mask, ref


def _token_logprobs(logits, labels):
    return torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None])[..., 0]


def _naive_loss(objective, logits, labels, mask, ref, loss):
    """The paper's formulas, one pair at a time, from a full softmax."""
    logp = _token_logprobs(logits, labels)
    if objective == "sft":
        return -(logp * mask).sum() / mask.sum()
    total = 0.0
    pairs = ROWS // 2
    for p in range(pairs):
        w, l = 2 * p, 2 * p + 1
        lw, ll = (logp[w] * mask[w]).sum(), (logp[l] * mask[l]).sum()
        nw, nl = lw / mask[w].sum(), ll / mask[l].sum()
        if objective == "redi":
            total = total - nw + loss.alpha * nl
        elif objective == "symmetric":
            total = total - nw + nl
        elif objective == "simpo":
            total = total - F.logsigmoid(loss.beta * (nw - nl) - loss.gamma)
        elif objective == "dpo":
            total = total - F.logsigmoid(loss.beta * ((lw - ref[w]) - (ll - ref[l])))
    return total / pairs


def _ours(objective, logits, labels, mask, ref, loss):
    out = compute_objective(_token_logprobs(logits, labels), mask, loss, ref)
    return out.numerator / out.denominator, out


@pytest.mark.parametrize("objective", ["sft", "redi", "symmetric", "simpo", "dpo"])
def test_objective_matches_naive_reference(objective):
    loss = LossConfig(objective=objective, alpha=0.8, beta=2.0 if objective == "simpo" else 0.1,
                      gamma=1.0)
    logits, labels, mask, ref = _data()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    expected = _naive_loss(objective, a, labels, mask, ref, loss)
    got, _ = _ours(objective, b, labels, mask, ref, loss)
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


def test_redi_with_alpha_zero_is_length_normalised_sft_on_chosen():
    logits, labels, mask, _ = _data(1)
    got, _ = _ours("redi", logits, labels, mask, None, LossConfig(objective="redi", alpha=0.0))
    logp = _token_logprobs(logits, labels)
    chosen = [(logp[r] * mask[r]).sum() / mask[r].sum() for r in range(0, ROWS, 2)]
    torch.testing.assert_close(got, -torch.stack(chosen).mean())


def test_raising_the_rejected_likelihood_raises_the_redi_loss():
    logits, labels, mask, _ = _data(2)
    loss = LossConfig(objective="redi", alpha=0.8)
    before, _ = _ours("redi", logits, labels, mask, None, loss)
    boosted = logits.clone()
    for row in range(1, ROWS, 2):
        boosted[row].scatter_add_(-1, labels[row][..., None], torch.full((SEQ, 1), 3.0,
                                                                         dtype=boosted.dtype))
    after, _ = _ours("redi", boosted, labels, mask, None, loss)
    assert after > before
    # and the gradient pushes the rejected label logits down (positive gradient of the loss)
    x = logits.clone().requires_grad_()
    _ours("redi", x, labels, mask, None, loss)[0].backward()
    rejected_grad = x.grad[1::2].gather(-1, labels[1::2][..., None])[..., 0] * mask[1::2]
    assert (rejected_grad >= 0).all() and rejected_grad.sum() > 0


def test_metrics_and_dpo_at_reference_is_log_two():
    logits, labels, mask, _ = _data(3)
    logp = _token_logprobs(logits, labels)
    ref = (logp * mask).sum(-1)
    loss = LossConfig(objective="dpo", beta=0.1)
    value, out = _ours("dpo", logits, labels, mask, ref, loss)
    assert value.item() == pytest.approx(math.log(2.0))
    metrics = summarize_stats(out.stats)
    norm = (logp * mask).sum(-1) / mask.sum(-1)
    assert metrics["logp_chosen"] == pytest.approx(norm[0::2].mean().item())
    assert metrics["logp_rejected"] == pytest.approx(norm[1::2].mean().item())
    assert metrics["pair_accuracy"] == pytest.approx((norm[0::2] > norm[1::2]).double().mean().item())
    assert metrics["processed_tokens"] == ROWS * SEQ and metrics["rows"] == ROWS
    assert metrics["completion_tokens"] == mask.sum().item()


def test_empty_completion_and_missing_reference_are_clear_errors():
    logits, labels, mask, _ = _data()
    mask[3] = 0.0
    with pytest.raises(ValueError, match=r"rows \[3\] .* no completion tokens"):
        _ours("redi", logits, labels, mask, None, LossConfig(objective="redi"))
    logits, labels, mask, _ = _data()
    with pytest.raises(ValueError, match="reference log-probs"):
        _ours("dpo", logits, labels, mask, None, LossConfig(objective="dpo"))


def _packed(tensor, fill):
    """Returns [ROWS, SEQ] rows packed three to a row ([ROWS / 3, 3 * SEQ + 2]), then ``fill``."""
    rows = tensor.reshape(ROWS // 3, 3 * SEQ)
    return torch.cat([rows, torch.full((ROWS // 3, 2), fill, dtype=tensor.dtype)], dim=1)


def _packing():
    """Returns [ROWS / 3, 3 * SEQ + 2] sequence ids of ``_packed`` rows: -1 on the padding."""
    ids = torch.arange(ROWS).repeat_interleave(SEQ).reshape(ROWS, SEQ)
    return _packed(ids, -1)


@pytest.mark.parametrize("objective", ["sft", "redi", "symmetric", "simpo", "dpo"])
def test_packed_sequences_give_the_padded_objective(objective):
    loss = LossConfig(objective=objective, alpha=0.8)
    logits, labels, mask, ref = _data(4)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    padded = compute_objective(_token_logprobs(a, labels), mask, loss, ref)
    packed = compute_objective(_packed(_token_logprobs(b, labels), 0.0), _packed(mask, 0.0),
                               loss, ref, sequence_ids=_packing(), num_sequences=ROWS)
    torch.testing.assert_close(packed.numerator, padded.numerator, rtol=1e-6, atol=1e-6)
    assert packed.denominator == padded.denominator
    torch.testing.assert_close(packed.stats[:8], padded.stats[:8], rtol=1e-6, atol=1e-6)
    packed.numerator.backward()
    padded.numerator.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)


def test_sequence_sums_without_ids_are_row_sums():
    logits, labels, mask, _ = _data()
    logp = _token_logprobs(logits, labels)
    sums, lengths = sequence_logprob_sums(logp, mask)
    torch.testing.assert_close(sums, (logp * mask).sum(-1))
    torch.testing.assert_close(lengths, mask.sum(-1))
    ids = torch.arange(ROWS).unsqueeze(-1).expand(ROWS, SEQ)
    with_ids = sequence_logprob_sums(logp, mask, ids, ROWS)
    torch.testing.assert_close(with_ids[0], sums)
    torch.testing.assert_close(with_ids[1], lengths)
    orphan = ids.clone()
    orphan[0, SEQ // 2] = -1
    with pytest.raises(ValueError, match="1 completion token"):
        sequence_logprob_sums(logp, mask, orphan, ROWS)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("objective", ["sft", "redi", "symmetric"])
def test_linear_token_weights_give_the_numerator_and_its_gradient(objective, packed):
    loss = LossConfig(objective=objective, alpha=0.7)
    logits, labels, mask, _ = _data(5)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    expected = compute_objective(_token_logprobs(a, labels), mask, loss).numerator
    logp, packing = _token_logprobs(b, labels), {}
    if packed:
        logp, mask = _packed(logp, 0.0), _packed(mask, 0.0)
        packing = dict(sequence_ids=_packing(), num_sequences=ROWS)
    weights = linear_token_weights(objective, loss, mask, **packing)
    assert weights.dtype == torch.float32 and weights.shape == mask.shape
    got = (weights * -logp).sum()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    got.backward()
    expected.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("objective", ["simpo", "dpo"])
def test_nonlinear_objectives_have_no_token_weights(objective):
    _, _, mask, _ = _data()
    assert linear_token_weights(objective, LossConfig(objective=objective), mask) is None
