"""Benchmark files (JSONL: id, problem, answer, benchmark) and their conversion from the public releases.

A benchmark file holds one problem per line::

    {"id": "math500/test/precalculus/807.json", "problem": "...", "answer": "\\frac{3}{2}", "benchmark": "MATH-500"}

``id`` must be unique across all files of a run (prefix it with the benchmark, as ``public_record``
does); ``benchmark`` names the table row (the file name without extension when absent); ``answer``
is the reference in LaTeX, compared symbolically with the last ``\\boxed{}`` of a response.
"""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    benchmark: str

    def reference(self) -> dict:
        """Return the record tools/grade.py reads as a reference."""
        return {"id": self.id, "answer": self.answer, "benchmark": self.benchmark}


class BenchmarkFileError(ValueError):
    """A benchmark file line lacks a field or repeats an id; the message names file and line."""


def read_benchmarks(paths: list[str | Path]) -> list[Problem]:
    """Return the problems of the files in order; raise BenchmarkFileError on a bad line or a repeated id."""
    problems, seen = [], {}
    for path in map(Path, paths):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                problem = _problem(json.loads(line), path.stem, where)
                if problem.id in seen:
                    raise BenchmarkFileError(f"{where}: id {problem.id!r} already used at {seen[problem.id]}; ids must "
                                         "be unique across the run's files (prefix them with the benchmark)")
                seen[problem.id] = where
                problems.append(problem)
    return problems


def _problem(record: dict, default_benchmark: str, where: str) -> Problem:
    for name in ("id", "problem", "answer"):
        if record.get(name) is None or str(record[name]).strip() == "":
            raise BenchmarkFileError(f"{where}: field {name!r} is missing or empty")
    return Problem(str(record["id"]), str(record["problem"]), str(record["answer"]),
                   str(record.get("benchmark") or default_benchmark))


@dataclass(frozen=True)
class PublicRelease:
    """Where a benchmark is published on the Hugging Face hub and which fields hold problem, answer and id."""

    dataset: str
    split: str
    problem_field: str
    answer_field: str
    id_field: str | None  # None: the row number


# The releases the paper's benchmarks are usually taken from (the rllm / DeepScaleR evaluation sets
# hold the same problems; AMC there is AMC 2022+2023, 83 problems: AI-MO/aimo-validation-amc).
PUBLIC_RELEASES = {
    "MATH-500": PublicRelease("HuggingFaceH4/MATH-500", "test", "problem", "answer", "unique_id"),
    "AIME24": PublicRelease("HuggingFaceH4/aime_2024", "train", "problem", "answer", "id"),
    "AMC23": PublicRelease("math-ai/amc23", "test", "question", "answer", "id"),
    "Minerva": PublicRelease("math-ai/minervamath", "test", "question", "answer", None),
    "OlympiadBench": PublicRelease("math-ai/olympiadbench", "test", "question", "answer", None),
}


def public_record(benchmark: str, row: dict, row_number: int) -> dict:
    """Return the benchmark-file record of one row of a public release (see PUBLIC_RELEASES)."""
    release = PUBLIC_RELEASES[benchmark]
    answer = row[release.answer_field]
    if isinstance(answer, list):  # some releases keep a list of accepted final answers
        answer = answer[0]
    local_id = row[release.id_field] if release.id_field else row_number
    return {"id": f"{benchmark}/{local_id}", "problem": str(row[release.problem_field]).strip(),
            "answer": str(answer).strip(), "benchmark": benchmark}
