"""Trimming right padding keeps every loss-carrying position and the layout's multiple."""

import pytest
import torch

from redi_megatron.sequence_trimming import sequence_multiple, trim_padding, trimmed_length


def _batch(rows, length, last_loss_positions):
    loss_mask = torch.zeros(rows, length)
    for row, last in enumerate(last_loss_positions):
        loss_mask[row, 2:last + 1] = 1.0
    return {"tokens": torch.arange(rows * length).view(rows, length), "loss_mask": loss_mask,
            "labels": torch.zeros(rows, length, dtype=torch.long),
            "position_ids": torch.arange(length).expand(rows, length),
            "ref_logps": torch.zeros(rows)}


def test_length_covers_the_last_loss_position_of_every_micro_batch_rounded_up():
    batches = [_batch(2, 100, [10, 20]), _batch(2, 100, [30, 5])]
    assert trimmed_length(batches, 8) == 32
    assert trimmed_length(batches, 64) == 64
    assert trimmed_length(batches, 128) == 100  # never longer than the padding


def test_trim_cuts_per_token_tensors_and_keeps_per_row_ones():
    batches = [_batch(2, 100, [10, 20])]
    trimmed = trim_padding(batches, 8)[0]
    for key in ("tokens", "loss_mask", "labels", "position_ids"):
        assert trimmed[key].shape == (2, 24)
        torch.testing.assert_close(trimmed[key], batches[0][key][:, :24])
    assert trimmed["ref_logps"].shape == (2,)
    assert trimmed["loss_mask"].sum() == batches[0]["loss_mask"].sum()


@pytest.mark.parametrize("args,expected", [
    ((64, 4, True, 1), 64), ((6, 4, True, 1), 12), ((8, 2, False, 3), 24), ((0, 1, False, 1), 1)])
def test_multiple_satisfies_sequence_and_context_parallelism(args, expected):
    assert sequence_multiple(*args) == expected


def test_context_parallelism_without_transformer_engine_is_a_config_error():
    from redi_megatron.config import ConfigError, ModelConfig, ParallelConfig
    from redi_megatron.qwen.architecture import architecture_from_model_config
    from redi_megatron.qwen.model import transformer_config
    from redi_megatron.runtime import Accelerators

    cpu = Accelerators(cuda=False, transformer_engine=False, apex=False)
    arch = architecture_from_model_config(ModelConfig())
    with pytest.raises(ConfigError, match="parallel.context=2 needs Transformer Engine"):
        transformer_config(arch, ParallelConfig(context=2), ModelConfig(), cpu)
