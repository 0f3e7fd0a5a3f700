"""The paper's data rules: which teacher rows to keep and which traces become positive / negative.

Rules (REDI_METHOD.md): drop the listed sources (default ``cn_k12``); keep ``problem_is_valid ==
"yes"``; a trace is correct when every chosen verifier says True; the positive is the first correct
generation, the negative the first generation that is not correct. Traces that cannot be used
(null, not a string, empty, oversized, not valid Unicode) are excluded from both roles and counted.
"""

from dataclasses import dataclass, field

from redi_megatron.data.raw_traces import RawRow

DEFAULT_DROP_SOURCES = ("cn_k12",)
DEFAULT_VERIFIERS = ("llama_verification", "math_verify_reparsed_answer")


@dataclass(frozen=True)
class SelectionRules:
    """What to drop and which shipped verifiers must agree for a trace to count as correct."""

    drop_sources: tuple[str, ...] = DEFAULT_DROP_SOURCES
    verifiers: tuple[str, ...] = DEFAULT_VERIFIERS
    max_trace_chars: int = 1_000_000


class BadInput(ValueError):
    """A row that cannot be read as an OpenR1 row; ``reason`` is the counted skip reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class TeacherRow:
    """A validated row; ``traces[i]`` is None when generation i is unusable (see ``trace_skips``)."""

    row: int
    problem: str
    answer: str | None
    source: str
    problem_is_valid: str
    traces: list[str | None]
    shipped_labels: list[bool] | None
    trace_skips: list[tuple[int, str]] = field(default_factory=list)


def teacher_row(raw: RawRow, rules: SelectionRules, labels_required: bool, answer_required: bool) -> TeacherRow:
    """Return the validated row, or raise BadInput naming the first problem found."""
    if raw.error:
        raise BadInput(raw.error)
    record = raw.record
    problem = _text_field(record, "problem")
    source = _text_field(record, "source")
    validity = record.get("problem_is_valid")
    if validity is None:
        raise BadInput("missing_field:problem_is_valid")
    answer = record.get("answer")
    if answer_required:
        answer = _text_field(record, "answer")
    generations = record.get("generations")
    if generations is None:
        raise BadInput("missing_field:generations")
    if not isinstance(generations, list):
        raise BadInput("bad_field:generations")
    labels = shipped_labels(record, rules.verifiers, len(generations)) if labels_required else None
    row = TeacherRow(raw.row, problem, answer if isinstance(answer, str) else None, source, str(validity),
                     [], labels)
    for index, trace in enumerate(generations):
        problem_with_trace = _trace_problem(trace, rules.max_trace_chars)
        row.traces.append(None if problem_with_trace else trace)
        if problem_with_trace:
            row.trace_skips.append((index, problem_with_trace))
    return row


def drop_reason(row: TeacherRow, rules: SelectionRules) -> str | None:
    """Return why the paper's rules drop this row (source, validity), or None to keep it."""
    if row.source in rules.drop_sources:
        return f"source:{row.source}"
    if row.problem_is_valid != "yes":
        return "problem_not_valid"
    return None


def select_traces(correct: list[bool | None]) -> tuple[int | None, int | None]:
    """Return (positive, negative) generation indices; None entries (unusable traces) are never picked."""
    positive = next((i for i, verdict in enumerate(correct) if verdict is True), None)
    negative = next((i for i, verdict in enumerate(correct) if verdict is False), None)
    return positive, negative


def _text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if value is None:
        raise BadInput(f"missing_field:{name}")
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"bad_field:{name}")
    if not _is_valid_unicode(value):
        raise BadInput(f"invalid_unicode:{name}")
    return value


def shipped_labels(record: dict, verifiers: tuple[str, ...], count: int) -> list[bool]:
    """Return per-generation correctness: True only where every chosen verifier says True."""
    correctness = record.get("correctness")
    if correctness is None:
        raise BadInput("missing_field:correctness")
    if not isinstance(correctness, dict):
        raise BadInput("bad_field:correctness")
    columns = []
    for verifier in verifiers:
        column = correctness.get(verifier)
        if column is None:
            raise BadInput(f"missing_field:correctness.{verifier}")
        if not isinstance(column, list) or len(column) != count:
            raise BadInput(f"bad_field:correctness.{verifier}")
        columns.append(column)
    # A null label (verifier did not run) is not a "yes": such a trace is not correct.
    return [all(column[i] is True for column in columns) for i in range(count)]


def _trace_problem(trace, max_chars: int) -> str | None:
    """Return why a generation is unusable, or None if it can be used."""
    if trace is None:
        return "null_trace"
    if not isinstance(trace, str):
        return "non_string_trace"
    if not trace.strip():
        return "empty_trace"
    if len(trace) > max_chars:
        return "trace_too_long"
    if not _is_valid_unicode(trace):
        return "invalid_unicode_trace"
    return None


def _is_valid_unicode(text: str) -> bool:
    """Return False for strings with lone surrogates (legal in JSON escapes, not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
