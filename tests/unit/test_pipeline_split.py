"""Layers per pipeline stage: even splits, the automatic uneven rule, explicit first/last counts."""

import pytest

from redi_megatron.config import ConfigError, ParallelConfig
from redi_megatron.pipeline_split import first_and_last_stage_layers, layers_per_stage


@pytest.mark.parametrize("layers,parallel,expected", [
    (28, ParallelConfig(pipeline=4), [7, 7, 7, 7]),
    (28, ParallelConfig(pipeline=8), [2, 4, 4, 4, 4, 4, 4, 2]),
    (3, ParallelConfig(pipeline=2), [2, 1]),
    (10, ParallelConfig(pipeline=8), [2, 1, 1, 1, 1, 1, 1, 2]),
    (12, ParallelConfig(pipeline=4, virtual_pipeline=2), [2, 4, 4, 2]),
    (6, ParallelConfig(pipeline=2, virtual_pipeline=2), [4, 2]),
    (3, ParallelConfig(pipeline=2, layers_in_first_stage=1), [1, 2]),
    (28, ParallelConfig(pipeline=8, layers_in_first_stage=1, layers_in_last_stage=3),
     [1, 4, 4, 4, 4, 4, 4, 3]),
    (28, ParallelConfig(pipeline=4, layers_in_last_stage=4), [8, 8, 8, 4]),
])
def test_layers_per_stage(layers, parallel, expected):
    counts = layers_per_stage(layers, parallel)
    assert counts == expected and sum(counts) == layers


def test_megatron_counts():
    assert first_and_last_stage_layers(28, ParallelConfig(pipeline=4)) == (None, None)
    assert first_and_last_stage_layers(28, ParallelConfig(pipeline=8)) == (2, 2)
    # Two stages: the first count alone (Megatron's VPP offsets need a middle stage otherwise).
    assert first_and_last_stage_layers(3, ParallelConfig(pipeline=2)) == (2, None)
    assert first_and_last_stage_layers(
        3, ParallelConfig(pipeline=2, layers_in_first_stage=1, layers_in_last_stage=2)) == (1, None)


@pytest.mark.parametrize("layers,parallel,words", [
    (3, ParallelConfig(pipeline=4), ["num_layers=3", "parallel.pipeline=4"]),
    (7, ParallelConfig(pipeline=2, virtual_pipeline=2), ["num_layers=7",
                                                         "parallel.virtual_pipeline=2"]),
    (4, ParallelConfig(layers_in_first_stage=2), ["parallel.pipeline >= 2"]),
    (3, ParallelConfig(pipeline=2, layers_in_first_stage=1, layers_in_last_stage=1),
     ["layers_in_first_stage=1", "layers_in_last_stage=1", "num_layers=3"]),
    (28, ParallelConfig(pipeline=8, layers_in_first_stage=3), ["25 layers", "7 middle"]),
    (8, ParallelConfig(pipeline=2, virtual_pipeline=2, layers_in_first_stage=3),
     ["parallel.layers_in_first_stage=3", "parallel.virtual_pipeline=2"]),
    (8, ParallelConfig(pipeline=2, layers_in_last_stage=0), ["parallel.layers_in_last_stage=0"]),
])
def test_impossible_splits_name_the_keys(layers, parallel, words):
    with pytest.raises(ConfigError) as error:
        layers_per_stage(layers, parallel)
    for word in words:
        assert word in str(error.value)
