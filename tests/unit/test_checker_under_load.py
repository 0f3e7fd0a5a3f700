"""The checker's verdicts do not depend on machine load: same items, idle and with every core busy."""

import os
import subprocess
import sys

import pytest
import sympy

from redi_megatron.data.answer_checking import CORRECT, INCORRECT, UNVERIFIED
from redi_megatron.data.checker_pool import CheckerPool


def _items() -> list[tuple[str, str]]:
    x = sympy.Symbol("x")
    expanded = sympy.latex(sympy.expand((x + 1) ** 12))  # about 0.5 s of CPU to prove equal
    return [
        ("<think>t</think> \\boxed{(x+1)^{12}}", expanded),
        ("<think>t</think> \\boxed{(x+1)^{12}}", expanded + "+1"),
        ("<think>t</think> \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
        ("<think>t</think> \\boxed{\\sin^2 x + \\cos^2 x}", "1"),
        ("<think>t</think> \\boxed{(x+y+z+1)^{500}}", "(1+x+y+z)^{499}"),  # needs far more than the budget
        ("<think>t</think> \\boxed{41}", "42"),
    ]


def _grade(items) -> tuple[list[str], int]:
    with CheckerPool(workers=2, timeout_s=1.5, grace_s=1.5) as pool:
        return list(pool.verdicts(items)), pool.retried


@pytest.mark.timeout(600)
def test_verdicts_are_the_same_idle_and_under_load():
    items = _items()
    idle, idle_retried = _grade(items)
    assert idle == [CORRECT, INCORRECT, CORRECT, CORRECT, UNVERIFIED, INCORRECT]
    busy_loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  for _ in range(max(2, os.cpu_count() or 1))]
    try:
        loaded, loaded_retried = _grade(items)
    finally:
        for process in busy_loops:
            process.kill()
            process.wait()
    assert loaded == idle
    assert loaded_retried == idle_retried == 1
