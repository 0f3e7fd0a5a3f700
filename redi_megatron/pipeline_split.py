"""How many decoder layers each pipeline stage holds: an even split, or uneven first/last stages.

Megatron-Core places ``num_layers_in_first_pipeline_stage`` layers on the first stage,
``num_layers_in_last_pipeline_stage`` on the last and splits the rest evenly over the middle
stages (each stage's share then splits evenly over its virtual stages). The config keys
``parallel.layers_in_first_stage`` / ``parallel.layers_in_last_stage`` set those two numbers.
When both are null and the layers do not split evenly, they are chosen here: every middle stage
gets ceil(layers / stages) layers (or floor, when ceil leaves the ends fewer than one layer
each), and the first and last stages share the rest, the last one (which also holds the
vocabulary projection and the loss) taking the smaller half. 28 layers at PP=8 become
2, 4, 4, 4, 4, 4, 4, 2; 3 layers at PP=2 become 2, 1. With virtual stages the same rule works in
groups of ``parallel.virtual_pipeline`` layers.
"""

from typing import List, Optional, Tuple

from redi_megatron.config import ConfigError, ParallelConfig

_FIRST, _LAST = "parallel.layers_in_first_stage", "parallel.layers_in_last_stage"


def _automatic(num_layers: int, pipeline: int, virtual: int) -> Tuple[int, int]:
    if num_layers % virtual:
        raise ConfigError(f"num_layers={num_layers} is not divisible by "
                          f"parallel.virtual_pipeline={virtual}")
    groups = num_layers // virtual
    if groups < pipeline:
        raise ConfigError(f"num_layers={num_layers} is too few for parallel.pipeline={pipeline} x "
                          f"parallel.virtual_pipeline={virtual}: every stage needs a layer")
    middle = -(-groups // pipeline)
    ends = groups - (pipeline - 2) * middle
    if ends < 2:
        middle = groups // pipeline
        ends = groups - (pipeline - 2) * middle
    last = ends // 2
    return (ends - last) * virtual, last * virtual


def _check_explicit(num_layers: int, pipeline: int, virtual: int,
                    first: Optional[int], last: Optional[int]) -> None:
    if pipeline < 2:
        raise ConfigError(f"{_FIRST} / {_LAST} need parallel.pipeline >= 2 (got {pipeline}); "
                          "set them to null")
    for key, value in ((_FIRST, first), (_LAST, last)):
        if value is not None and (value < 1 or value % virtual):
            raise ConfigError(f"{key}={value} must be >= 1 and divisible by "
                              f"parallel.virtual_pipeline={virtual}")
    middle_layers = num_layers - (first or 0) - (last or 0)
    middle_stages = pipeline - (first is not None) - (last is not None)
    if middle_stages == 0 and middle_layers != 0:
        raise ConfigError(f"{_FIRST}={first} + {_LAST}={last} must equal num_layers={num_layers} "
                          f"with parallel.pipeline={pipeline}")
    if middle_stages and (middle_layers < 1 or middle_layers % (middle_stages * virtual)):
        raise ConfigError(
            f"the {middle_layers} layers left by {_FIRST}={first} and {_LAST}={last} of "
            f"num_layers={num_layers} must split evenly over {middle_stages} middle pipeline "
            f"stage(s) x parallel.virtual_pipeline={virtual}")


def first_and_last_stage_layers(num_layers: int,
                                parallel: ParallelConfig) -> Tuple[Optional[int], Optional[int]]:
    """Returns Megatron's (first-stage, last-stage) layer counts; (None, None) for an even split.

    Raises ConfigError naming the keys and numbers when the layers cannot be placed.
    """
    pipeline, virtual = parallel.pipeline, parallel.virtual_pipeline or 1
    first, last = parallel.layers_in_first_stage, parallel.layers_in_last_stage
    if first is not None or last is not None:
        _check_explicit(num_layers, pipeline, virtual, first, last)
    elif num_layers % (pipeline * virtual) == 0:
        return None, None
    else:
        first, last = _automatic(num_layers, pipeline, virtual)
    if pipeline == 2 and first is not None and last is not None:
        # The same split stated by the first count alone: with both set and no middle stage,
        # Megatron's layer offset under virtual stages divides by the number of middle stages.
        return first, None
    return first, last


def layers_per_stage(num_layers: int, parallel: ParallelConfig) -> List[int]:
    """Returns the number of decoder layers on each pipeline stage, first to last."""
    first, last = first_and_last_stage_layers(num_layers, parallel)
    pipeline = parallel.pipeline
    middle_stages = pipeline - (first is not None) - (last is not None)
    middle = (num_layers - (first or 0) - (last or 0)) // middle_stages if middle_stages else 0
    counts = [middle] * pipeline
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    return counts
