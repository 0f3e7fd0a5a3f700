"""The run length (and so the LR schedule) comes from train.train_steps or from epochs."""

import pytest

from redi_megatron.config import ConfigError, load_config
from redi_megatron.training import _total_steps


def _config(*overrides):
    return load_config(None, ["data.global_batch_size=4", *overrides])


def test_train_steps_sets_the_run_length_whatever_the_epochs():
    assert _total_steps(_config("train.train_steps=7", "train.epochs=0"), num_samples=10) == 7


def test_epochs_count_whole_global_batches():
    assert _total_steps(_config("train.epochs=2"), num_samples=10) == 4
    assert _total_steps(_config("train.epochs=0.5"), num_samples=10) == 1


def test_a_global_batch_larger_than_the_data_and_a_missing_length_are_errors():
    with pytest.raises(ConfigError, match="exceeds the 3 samples"):
        _total_steps(_config(), num_samples=3)
    with pytest.raises(ConfigError, match="train.epochs > 0 or train.train_steps > 0"):
        _config("train.epochs=0")
