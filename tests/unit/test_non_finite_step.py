"""A step whose loss is not finite is skipped (no optimizer or LR update) and reported."""

import math
from types import SimpleNamespace

import pytest

from redi_megatron.training_step import optimizer_update


class _Refuses:
    def step(self, *args, **kwargs):
        raise AssertionError("a non-finite loss must not reach the optimizer or the LR schedule")


class _Counts:
    def __init__(self):
        self.calls = 0

    def step(self, *args, **kwargs):
        self.calls += 1
        return (True, 0.5, None) if not kwargs else None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_skips_the_update(value):
    engine = SimpleNamespace(optimizer=_Refuses(), scheduler=_Refuses())
    metrics = optimizer_update(engine, {"loss": value, "lr": 1e-6})
    assert metrics["skipped"] is True
    assert math.isnan(metrics["grad_norm"])


def test_finite_loss_updates_once():
    optimizer, scheduler = _Counts(), _Counts()
    metrics = optimizer_update(SimpleNamespace(optimizer=optimizer, scheduler=scheduler),
                               {"loss": 1.25, "lr": 1e-6})
    assert metrics == {"loss": 1.25, "lr": 1e-6, "skipped": False, "grad_norm": 0.5}
    assert optimizer.calls == 1 and scheduler.calls == 1
