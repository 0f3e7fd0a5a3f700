"""Finding the final answer of a reasoning trace: the last ``\\boxed{...}`` after ``</think>``."""

END_OF_THINKING = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def final_answer(trace: str, require_closed_thinking: bool = True) -> str | None:
    """Return the content of the last ``\\boxed{}`` after the end of thinking, or None.

    A trace that never closes its thinking has no final answer when ``require_closed_thinking``
    is set: the grading rule of the method counts it as wrong, whatever it boxed while thinking.
    """
    cut = trace.rfind(END_OF_THINKING)
    if cut >= 0:
        trace = trace[cut + len(END_OF_THINKING):]
    elif require_closed_thinking:
        return None
    return last_boxed(trace)


def last_boxed(text: str) -> str | None:
    """Return the content of the last well-formed ``\\boxed{...}`` (or ``\\fbox{...}``) in text."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    while start >= 0:
        content = _boxed_content_at(text, start)
        if content is not None:
            return content
        start = max(text.rfind(command, 0, start) for command in _BOX_COMMANDS)
    return None


def _boxed_content_at(text: str, start: int) -> str | None:
    """Return the argument of the box command starting at ``start``, or None if unbalanced."""
    opening = _skip_command(text, start)
    if not text.startswith("{", opening):
        return _unbraced_argument(text, opening)
    depth = 0
    for j in range(opening, len(text)):
        char = text[j]
        if char in "{}" and text[j - 1] == "\\":
            continue  # \{ and \} are literal braces (set notation), not grouping
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1:j].strip()
    return None


def _skip_command(text: str, start: int) -> int:
    """Return the index just after the box command name starting at ``start``."""
    end = start + 1
    while end < len(text) and text[end].isalpha():
        end += 1
    return end


def _unbraced_argument(text: str, end: int) -> str | None:
    """Return the argument of ``\\boxed 5`` style boxes (one whitespace-delimited token)."""
    if end >= len(text) or not text[end].isspace():
        return None
    token = text[end:].strip().split(maxsplit=1)
    return token[0].rstrip("$.,") if token else None
