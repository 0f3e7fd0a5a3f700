"""MicroBatchLoader: DP sharding, exact resume, masks, pair layout, length filtering."""

import json
import logging

import numpy as np
import pytest
import torch

from redi_megatron.data.micro_batches import MicroBatchLoader
from redi_megatron.data.token_shards import ShardWriter

PAD, EOT = 1, 2


def _write_shard(prefix, kind: str, count: int, long_every: int = 0):
    """Sample i: prompt [100+i, 3, 3...], completions of recognisable ids ending with EOT."""
    rng = np.random.default_rng(0)
    with ShardWriter(prefix, kind, vocab_size=5000, metadata={"pad_id": PAD, "eos_id": EOT}) as writer:
        for i in range(count):
            prompt = np.array([100 + i] + [3] * int(rng.integers(1, 6)))
            lengths = rng.integers(1, 8, size=1 if kind == "sft" else 2)
            if long_every and i % long_every == 0:
                lengths[-1] = 40
            completions = [np.append(np.full(n, 1000 + 10 * i + c), EOT) for c, n in enumerate(lengths)]
            writer.add(prompt, completions)
    return str(prefix)


def _sample_ids(batches) -> list[int]:
    return [int(row[0]) - 100 for batch in batches for row in batch["tokens"]]


def _loader(prefix, **overrides):
    arguments = dict(seq_length=24, micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1, seed=7)
    return MicroBatchLoader(prefix, **{**arguments, **overrides})


def test_two_dp_ranks_see_disjoint_samples_covering_the_epoch(tmp_path):
    prefix = _write_shard(tmp_path / "sft", "sft", 40)
    ranks = [_loader(prefix, dp_rank=r, dp_size=2) for r in range(2)]
    assert ranks[0].num_microbatches == 2
    seen = [[], []]
    for _ in range(5):
        for r, loader in enumerate(ranks):
            batches = loader.next_global_batch()
            assert len(batches) == 2 and all(b["tokens"].shape == (2, 24) for b in batches)
            seen[r].extend(_sample_ids(batches))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert ranks[0].epoch == 1 and ranks[0].consumed_samples == 40
    assert _sample_ids(ranks[0].next_global_batch()) != seen[0][:4]  # epoch 1 is reshuffled


def test_epoch_remainder_is_dropped_and_epochs_roll_over(tmp_path):
    loader = _loader(_write_shard(tmp_path / "sft", "sft", 43))
    epoch0 = [i for _ in range(5) for i in _sample_ids(loader.next_global_batch())]
    assert len(set(epoch0)) == 40 and loader.epoch == 1
    epoch1 = [i for _ in range(5) for i in _sample_ids(loader.next_global_batch())]
    assert len(set(epoch1)) == 40 and epoch1 != epoch0


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_resume_after_k_samples_gives_the_identical_next_batch(tmp_path, kind):
    prefix = _write_shard(tmp_path / kind, kind, 30)
    reference = _loader(prefix, dp_rank=1, dp_size=2, global_batch_size=4, micro_batch_size=1)
    for _ in range(9):  # crosses the epoch boundary at 28 samples
        reference.next_global_batch()
    state = json.loads(json.dumps(reference.state_dict()))
    expected = reference.next_global_batch()
    resumed = _loader(prefix, dp_rank=1, dp_size=2, global_batch_size=4, micro_batch_size=1)
    resumed.load_state_dict(state)
    fresh = _loader(prefix, dp_rank=1, dp_size=2, global_batch_size=4, micro_batch_size=1,
                    consumed_samples=state["consumed_samples"])
    for loader in (resumed, fresh):
        for got, want in zip(loader.next_global_batch(), expected, strict=True):
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="seed"):
        _loader(prefix, seed=8).load_state_dict(state)


def test_labels_and_loss_mask_cover_exactly_the_completion(tmp_path):
    loader = _loader(_write_shard(tmp_path / "sft", "sft", 16))
    assert loader.dataset.metadata["pad_id"] == PAD
    for batch in loader.next_global_batch():
        assert batch["tokens"].dtype == batch["labels"].dtype == torch.int64
        assert batch["loss_mask"].dtype == torch.float32
        for tokens, labels, mask, positions in zip(batch["tokens"], batch["labels"], batch["loss_mask"],
                                                   batch["position_ids"]):
            length = int((tokens != PAD).sum())
            assert torch.equal(labels[:length - 1], tokens[1:length]) and (labels >= 0).all()
            completion = [t for t in range(length - 1) if tokens[t + 1] >= 1000 or tokens[t + 1] == EOT]
            assert mask.nonzero().flatten().tolist() == completion
            assert labels[completion[-1]] == EOT
            assert torch.equal(positions, torch.arange(24))


def test_pairs_keep_chosen_and_rejected_adjacent_with_ref_logps(tmp_path):
    prefix = _write_shard(tmp_path / "pairs", "pairs", 12)
    ref = np.arange(24, dtype=np.float32).reshape(12, 2)
    np.save(f"{prefix}.ref_logps.npy", ref)
    loader = _loader(prefix, micro_batch_size=2, global_batch_size=4)
    assert loader.kind == "pairs" and len(loader.dataset) == 12
    for batch in loader.next_global_batch():
        tokens = batch["tokens"]
        assert tokens.shape == (4, 24) and batch["ref_logps"].shape == (4,)
        for p in range(2):
            chosen, rejected = tokens[2 * p], tokens[2 * p + 1]
            sample = int(chosen[0]) - 100
            assert int(rejected[0]) - 100 == sample
            assert 1000 + 10 * sample in chosen.tolist() and 1000 + 10 * sample + 1 in rejected.tolist()
            assert batch["ref_logps"][2 * p:2 * p + 2].tolist() == ref[sample].tolist()


def test_too_long_samples_are_filtered_counted_and_logged(tmp_path, caplog):
    prefix = _write_shard(tmp_path / "pairs", "pairs", 20, long_every=4)
    with caplog.at_level(logging.INFO):
        loader = _loader(prefix, global_batch_size=4)
    assert len(loader.dataset) == 15 and loader.dataset.num_too_long == 5
    assert "5 of 20" in caplog.text
    seen = {i for _ in range(3) for i in _sample_ids(loader.next_global_batch())}
    assert not seen & {0, 4, 8, 12, 16}
    with pytest.raises(ValueError, match="no sample fits"):
        _loader(prefix, seq_length=3)


def test_batch_sizes_must_divide(tmp_path):
    prefix = _write_shard(tmp_path / "sft", "sft", 16)
    with pytest.raises(ValueError, match="global_batch_size 8 is not divisible by micro_batch_size 3 x dp_size 2"):
        _loader(prefix, micro_batch_size=3, dp_size=2)


def test_dali_backend_falls_back_to_the_plain_loader_with_a_log_line(tmp_path, caplog):
    from redi_megatron.data.dali_loader import build_loader, dali_available

    if dali_available():
        pytest.skip("nvidia-dali is installed; the fallback path is not taken")
    prefix = _write_shard(tmp_path / "sft", "sft", 16)
    arguments = dict(prefix=prefix, seq_length=24, micro_batch_size=2, global_batch_size=8, dp_rank=0,
                     dp_size=1, seed=7)
    with caplog.at_level(logging.INFO):
        loader = build_loader(**arguments)
    assert isinstance(loader, MicroBatchLoader)
    assert "nvidia-dali is not installed" in caplog.text
    with pytest.raises(ImportError):
        build_loader(backend="dali", **arguments)
