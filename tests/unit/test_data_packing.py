"""Packed micro-batches carry exactly the padded rows' sequences, per document, resumably."""

import json
import logging

import numpy as np
import pytest
import torch

from redi_megatron.config import ConfigError, LossConfig, load_config
from redi_megatron.data.packing import first_fit_decreasing
from redi_megatron.objectives import compute_objective
from redi_megatron.packed_sequences import (as_one_sequence, equal_rows, packed_seq_params,
                                            thd_micro_batches)
from test_data_micro_batches import _loader, _write_shard

PACK = 40


def test_first_fit_decreasing_is_deterministic_within_capacity():
    lengths = [7, 3, 9, 3, 5, 1, 8]
    rows = first_fit_decreasing(lengths, 10)
    assert rows == [[2, 5], [6], [0, 1], [3, 4]]  # 9+1, 8, 7+3, 5+3 (ties by index)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert first_fit_decreasing(lengths, 10) == rows
    with pytest.raises(ValueError, match="exceeds the row capacity"):
        first_fit_decreasing([11], 10)


def _by_sequence(batch, num_sequences):
    """Returns, per sequence, its (tokens, labels, loss_mask, position_ids) at its labelled positions."""
    ids = batch["sequence_ids"]
    return [tuple(batch[key][ids == j] for key in ("tokens", "labels", "loss_mask", "position_ids"))
            for j in range(num_sequences)]


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_packed_sequences_equal_the_padded_rows(tmp_path, kind):
    prefix = _write_shard(tmp_path / kind, kind, 24)
    padded = _loader(prefix, micro_batch_size=4, global_batch_size=8)
    packed = _loader(prefix, micro_batch_size=4, global_batch_size=8, pack_tokens=PACK)
    for _ in range(2):
        for pad_batch, pack_batch in zip(padded.next_global_batch(), packed.next_global_batch(), strict=True):
            n = pad_batch["tokens"].shape[0]
            assert int(pack_batch["num_sequences"]) == n
            assert pack_batch["tokens"].shape[1] == PACK and pack_batch["tokens"].shape[0] < n
            for j, (tokens, labels, mask, positions) in enumerate(_by_sequence(pack_batch, n)):
                length = int((pad_batch["tokens"][j] != 1).sum())  # PAD is 1 in these shards
                assert torch.equal(tokens, pad_batch["tokens"][j, :length - 1])
                assert torch.equal(labels, pad_batch["labels"][j, :length - 1])
                assert torch.equal(mask, pad_batch["loss_mask"][j, :length - 1])
                assert torch.equal(positions, torch.arange(length - 1))
            outside = pack_batch["sequence_ids"] < 0
            assert not pack_batch["loss_mask"][outside].any()


def test_a_pairs_chosen_and_rejected_share_a_row(tmp_path):
    loader = _loader(_write_shard(tmp_path / "pairs", "pairs", 24), micro_batch_size=4,
                     global_batch_size=4, pack_tokens=PACK)
    for batch in loader.next_global_batch():
        for pair in range(4):
            rows = [(batch["sequence_ids"] == j).any(dim=1).nonzero().flatten().tolist()
                    for j in (2 * pair, 2 * pair + 1)]
            assert rows[0] == rows[1] and len(rows[0]) == 1


def test_per_sequence_objective_equals_the_padded_one(tmp_path):
    prefix = _write_shard(tmp_path / "pairs", "pairs", 24)
    pad_batch = _loader(prefix, micro_batch_size=4, global_batch_size=4).next_global_batch()[0]
    pack_batch = _loader(prefix, micro_batch_size=4, global_batch_size=4, pack_tokens=PACK).next_global_batch()[0]
    table = torch.randn(5000, generator=torch.Generator().manual_seed(0)).abs().neg()  # log p per label id
    for objective in ("sft", "redi", "simpo"):
        loss = LossConfig(objective=objective)
        pad_logp = table[pad_batch["labels"]].requires_grad_()
        pack_logp = table[pack_batch["labels"]].requires_grad_()
        want = compute_objective(pad_logp, pad_batch["loss_mask"], loss)
        got = compute_objective(pack_logp, pack_batch["loss_mask"], loss, None,
                                pack_batch["sequence_ids"], pack_batch["num_sequences"])
        torch.testing.assert_close(got.numerator, want.numerator, rtol=1e-6, atol=0)
        assert int(got.denominator) == int(want.denominator)
        torch.testing.assert_close(got.stats[:8], want.stats[:8], rtol=1e-6, atol=0)
        want.numerator.backward()
        got.numerator.backward()
        # Each label position's gradient lands on the same (sequence, position) in both layouts.
        for j, grad in enumerate(_by_sequence({**pack_batch, "tokens": pack_logp.grad}, 8)):
            length = grad[0].numel()
            torch.testing.assert_close(grad[0], pad_logp.grad[j, :length], rtol=1e-6, atol=0)


def test_resume_mid_epoch_rebuilds_the_identical_packed_batches(tmp_path):
    prefix = _write_shard(tmp_path / "pairs", "pairs", 30)
    arguments = dict(dp_rank=1, dp_size=2, global_batch_size=8, micro_batch_size=2, pack_tokens=PACK)
    reference = _loader(prefix, **arguments)
    for _ in range(4):  # crosses the epoch boundary at 24 samples
        reference.next_global_batch()
    state = json.loads(json.dumps(reference.state_dict()))
    expected = [reference.next_global_batch() for _ in range(2)]
    resumed = _loader(prefix, **arguments)
    resumed.load_state_dict(state)
    for want_step in expected:
        for got, want in zip(resumed.next_global_batch(), want_step, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_samples_too_long_to_pack_are_filtered_counted_and_named(tmp_path, caplog):
    prefix = _write_shard(tmp_path / "pairs", "pairs", 20, long_every=4)  # a row of >= 42 tokens
    with caplog.at_level(logging.INFO):
        loader = _loader(prefix, seq_length=64, global_batch_size=4, pack_tokens=PACK)
    assert loader.dataset.num_too_long == 0 and loader.dataset.num_too_long_to_pack == 5
    assert len(loader.dataset) == 15 and "5 more samples do not fit in one row of pack_tokens 40" in caplog.text
    with pytest.raises(ConfigError, match="data.pack_tokens=7"):
        _loader(prefix, pack_tokens=7)


@pytest.mark.parametrize("same_shape", [False, True])
def test_thd_micro_batches_cu_seqlens_and_shapes(tmp_path, same_shape):
    loader = _loader(_write_shard(tmp_path / "sft", "sft", 24), micro_batch_size=8, global_batch_size=16,
                     pack_tokens=24)
    rows = loader.next_global_batch() + [loader.next_global_batch()[0]]
    assert len({batch["tokens"].shape[0] for batch in rows}) > 1
    batches = thd_micro_batches(rows, 8, same_shape)
    assert all(batch["tokens"].shape[0] == 1 for batch in batches)
    assert (len({batch["tokens"].shape for batch in batches}) == 1) == same_shape
    for batch, unflat in zip(batches, rows):
        length = batch["tokens"].shape[1]
        last = int(as_one_sequence(unflat)["loss_mask"][0].nonzero().max())
        assert length % 8 == 0 and length > last and (same_shape or length < last + 9)
        params = packed_seq_params(batch["position_ids"], torch.device("cpu"))
        cu = params.cu_seqlens_q.tolist()
        assert params.qkv_format == "thd" and params.cu_seqlens_kv is params.cu_seqlens_q
        assert cu[0] == 0 and cu[-1] == length
        assert set(range(0, length, 24)) <= set(cu)  # every row starts a document
        assert params.max_seqlen_q == max(b - a for a, b in zip(cu, cu[1:]))
        for key in ("tokens", "loss_mask", "sequence_ids"):  # the rows laid end to end
            end_to_end = unflat[key].flatten()
            common = min(length, end_to_end.numel())
            assert torch.equal(batch[key][0, :common], end_to_end[:common])


def test_pack_tokens_validation_names_the_key():
    with pytest.raises(ConfigError, match="data.pack_tokens must be >= 0"):
        load_config(None, ["data.pack_tokens=-1"])
    with pytest.raises(ConfigError, match="data.pack_tokens=30 must be divisible by parallel.tensor=4"):
        load_config(None, ["data.pack_tokens=30", "parallel.tensor=4", "parallel.sequence_parallel=true",
                           "data.seq_length=32"])
    with pytest.raises(ConfigError, match="model.attention=sdpa"):
        load_config(None, ["data.pack_tokens=64", "model.attention=local"])
