"""Finding the final answer of a reasoning trace: the last ``\\boxed{...}`` after ``</think>``.

Extraction is linear in the trace length: braces are matched once for the whole text, so a trace
with thousands of unclosed ``\\boxed{`` costs one pass, not one pass per box.
"""

import re

END_OF_THINKING = "</think>"
BOX_MODES = ("last", "joined")
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)")
# Boxes closer than this, or closer than _SEPARATED and split by "and"/"or"/","/";", form one answer.
_ADJACENT = 10
_SEPARATED = 70
_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")


def final_answer(trace: str, require_closed_thinking: bool = True, boxes: str = "last") -> str | None:
    """Return the boxed final answer after the end of thinking, or None.

    A trace that never closes its thinking has no final answer when ``require_closed_thinking``
    is set: the grading rule of the method counts it as wrong, whatever it boxed while thinking.
    ``boxes="last"`` reads the last well-formed box only (the paper's rule); ``boxes="joined"``
    reads the trailing run of boxes that are adjacent or joined by "and", "or", "," or ";"
    (``\\boxed{-2} and \\boxed{1}`` -> ``-2, 1``), as Math-Verify does for multi-part answers.
    """
    if boxes not in BOX_MODES:
        raise ValueError(f"boxes must be one of {BOX_MODES}, got {boxes!r}")
    cut = trace.rfind(END_OF_THINKING)
    if cut >= 0:
        trace = trace[cut + len(END_OF_THINKING):]
    elif require_closed_thinking:
        return None
    found = well_formed_boxes(trace)
    if not found:
        return None
    if boxes == "last":
        return found[-1][2]
    return ", ".join(_trailing_group(trace, found))


def last_boxed(text: str) -> str | None:
    """Return the content of the last well-formed ``\\boxed{...}`` (or ``\\fbox{...}``) in text."""
    found = well_formed_boxes(text)
    return found[-1][2] if found else None


def well_formed_boxes(text: str) -> list[tuple[int, int, str]]:
    """Return (start, end, content) of every box command in text whose argument is complete, in order."""
    closing = _matching_braces(text)
    found = []
    for match in _BOX_COMMAND.finditer(text):
        opening = _skip_letters(text, match.end())
        if opening < len(text) and text[opening] == "{":
            end = closing.get(opening)
            if end is not None:
                found.append((match.start(), end + 1, text[opening + 1:end].strip()))
        else:
            argument = _unbraced_argument(text, opening)
            if argument is not None:
                found.append((match.start(), opening + len(argument[1]), argument[0]))
    return found


def _matching_braces(text: str) -> dict[int, int]:
    """Return {index of "{": index of its "}"} for every balanced brace pair, in one pass.

    ``\\{`` and ``\\}`` are literal braces (set notation), not grouping. A stray "}" with nothing
    open is ignored, so each "{" closes exactly where a scan counting depth from it would close.
    """
    closing: dict[int, int] = {}
    open_braces: list[int] = []
    for match in re.finditer(r"[{}]", text):
        j = match.start()
        if j > 0 and text[j - 1] == "\\":
            continue
        if match.group() == "{":
            open_braces.append(j)
        elif open_braces:
            closing[open_braces.pop()] = j
    return closing


def _skip_letters(text: str, end: int) -> int:
    """Return the index after the letters that continue a command name at ``end``."""
    while end < len(text) and text[end].isalpha():
        end += 1
    return end


_UNBRACED = re.compile(r"\s+(\S+)")


def _unbraced_argument(text: str, end: int) -> tuple[str, str] | None:
    """Return (answer, matched text) for ``\\boxed 5`` style boxes (one whitespace-delimited token)."""
    match = _UNBRACED.match(text, end)
    if match is None:
        return None
    return match.group(1).rstrip("$.,"), match.group()


def _trailing_group(text: str, found: list[tuple[int, int, str]]) -> list[str]:
    """Return the distinct contents of the last box and the boxes joined to it, in reading order."""
    group = [found[-1]]
    for box in reversed(found[:-1]):
        between = text[box[1]:group[-1][0]]
        near = len(between) < _ADJACENT
        joined = len(between) < _SEPARATED and _SEPARATOR.search(between) and box[2] != group[-1][2]
        if not (near or joined):
            break
        group.append(box)
    contents = []
    for _, _, content in reversed(group):
        if content not in contents:
            contents.append(content)
    return contents
