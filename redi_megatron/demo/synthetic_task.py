"""A synthetic reasoning task: multi-step arithmetic word problems and a scripted, fallible teacher.

Each problem is a starting count followed by 2-4 operations (gain, lose, double, triple). The
teacher writes OpenR1-style traces (``<think>`` steps ``</think>`` then a boxed answer), several per
problem; some carry one realistic mistake that propagates to the end: an arithmetic slip in a step,
a dropped step, or a sign error (adding what should be subtracted). Values stay positive and
multipliers are >= 2, so a trace with a mistake never lands on the right answer by accident.
Everything is a pure function of the seed.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Ben", "Ivy", "Max", "Eli", "Kai")
ITEMS = ("apples", "coins", "stickers", "marbles", "books", "shells", "cards", "pens")
MISTAKES = ("slip", "dropped_step", "sign_error")
SOURCE = "synthetic_arithmetic"
BENCHMARK = "synthetic-arith"


@dataclass(frozen=True)
class Operation:
    kind: str  # "add", "sub" or "mul"
    amount: int


@dataclass(frozen=True)
class Problem:
    id: str
    name: str
    item: str
    start: int
    operations: tuple[Operation, ...]

    @property
    def answer(self) -> int:
        value = self.start
        for operation in self.operations:
            value = apply(operation, value)
        return value

    def text(self) -> str:
        """Return the word problem."""
        sentences = [f"{self.name} has {self.start} {self.item}."]
        for operation in self.operations:
            sentences.append(_sentence(operation, self.name, self.item))
        sentences.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(sentences)


def apply(operation: Operation, value: int) -> int:
    """Return value after the operation."""
    if operation.kind == "add":
        return value + operation.amount
    if operation.kind == "sub":
        return value - operation.amount
    return value * operation.amount


def _sentence(operation: Operation, name: str, item: str) -> str:
    if operation.kind == "add":
        return f"Then {name} gets {operation.amount} more {item}."
    if operation.kind == "sub":
        return f"Then {name} gives away {operation.amount} {item}."
    word = {2: "doubles", 3: "triples"}[operation.amount]
    return f"Then {name} {word} the number of {item}."


_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_VERB = {"add": "gets {n} more", "sub": "gives away {n}", "mul": "multiplies by {n}"}


def make_problem(rng: random.Random, problem_id: str) -> Problem:
    """Return a random problem whose running value stays in [1, 99]."""
    value = rng.randint(2, 15)
    start = value
    operations = []
    for _ in range(rng.randint(2, 4)):
        choices = ["add", "sub"] + (["mul"] if value <= 30 else [])
        kind = rng.choice(choices)
        if kind == "sub" and value < 2:
            kind = "add"
        if kind == "add" and value > 97:
            kind = "sub"
        if kind == "add":
            amount = rng.randint(1, min(20, 99 - value))
        elif kind == "sub":
            amount = rng.randint(1, value - 1)
        else:
            amount = rng.choice((2, 3))
        operation = Operation(kind, amount)
        operations.append(operation)
        value = apply(operation, value)
    return Problem(problem_id, rng.choice(NAMES), rng.choice(ITEMS), start, tuple(operations))


def teacher_trace(problem: Problem, rng: random.Random, mistake: str | None) -> str:
    """Return one step-by-step trace; with ``mistake`` set, exactly one error that propagates."""
    wrong_step = rng.randrange(len(problem.operations)) if mistake else -1
    lines = [f"{problem.name} starts with {problem.start} {problem.item}."]
    value = problem.start
    step = 0
    for index, operation in enumerate(problem.operations):
        if index == wrong_step and mistake == "dropped_step":
            continue
        kind = operation.kind
        if index == wrong_step and mistake == "sign_error" and kind in ("add", "sub"):
            kind = "sub" if kind == "add" else "add"
        elif index == wrong_step and mistake == "sign_error" and value != operation.amount:
            kind = "add"  # a multiplier read as an addend: x * 3 written as x + 3
        result = apply(Operation(kind, operation.amount), value)
        if index == wrong_step and result == apply(operation, value):
            mistake = "slip"  # 2 * 2 == 2 + 2: the sign error would not be an error here
        if index == wrong_step and mistake == "slip":
            result += rng.choice((-2, -1, 1, 2, 10))
        step += 1
        verb = _VERB[operation.kind].format(n=operation.amount)
        lines.append(f"Step {step}: {problem.name} {verb}, so {value} {_SYMBOL[kind]} {operation.amount} = {result}.")
        value = result
    if rng.random() < 0.3:
        lines.append(f"Let me check the last step again: yes, it gives {value}.")
    lines.append(f"So {problem.name} has {value} {problem.item}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\nThe answer is \\boxed{" + str(value) + "}."


def raw_row(problem: Problem, rng: random.Random, generations: int, mistake_rate: float) -> dict:
    """Return an OpenR1-Math-Raw row for the problem, labelled with the teacher script's own truth.

    The labels are what the script intended; the pipeline re-grades every trace with the package's
    checker (build_redi_data --reverify), which reports its agreement with these labels.
    """
    traces, correct = [], []
    for _ in range(generations):
        mistake = rng.choice(MISTAKES) if rng.random() < mistake_rate else None
        traces.append(teacher_trace(problem, rng, mistake))
        correct.append(mistake is None)
    return {
        "problem": problem.text(),
        "answer": str(problem.answer),
        "source": SOURCE,
        "problem_is_valid": "yes",
        "uuid": problem.id,
        "generations": traces,
        "correctness": {"llama_verification": correct, "math_verify_reparsed_answer": list(correct)},
    }


def write_task(out_dir: str | Path, train_problems: int, eval_problems: int, seed: int = 0,
               generations: int = 4, mistake_rate: float = 0.35) -> dict:
    """Write raw.jsonl (teacher data), eval_problems.jsonl and eval_references.jsonl; return their paths.

    Held-out problems never share their text with a training problem.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    train, held_out = [], []
    while len(train) + len(held_out) < train_problems + eval_problems:
        target = train if len(train) < train_problems else held_out
        problem = make_problem(rng, f"{'train' if target is train else 'eval'}-{len(target):05d}")
        if problem.text() in seen:
            continue
        seen.add(problem.text())
        target.append(problem)
    paths = {"raw": out_dir / "raw.jsonl", "eval_problems": out_dir / "eval_problems.jsonl",
             "eval_references": out_dir / "eval_references.jsonl"}
    with open(paths["raw"], "w", encoding="utf-8") as handle:
        for problem in train:
            handle.write(json.dumps(raw_row(problem, rng, generations, mistake_rate)) + "\n")
    with open(paths["eval_problems"], "w", encoding="utf-8") as problems, \
            open(paths["eval_references"], "w", encoding="utf-8") as references:
        for problem in held_out:
            problems.write(json.dumps({"id": problem.id, "problem": problem.text()}) + "\n")
            references.write(json.dumps({"id": problem.id, "answer": str(problem.answer),
                                         "benchmark": BENCHMARK}) + "\n")
    return {key: str(path) for key, path in paths.items()}
