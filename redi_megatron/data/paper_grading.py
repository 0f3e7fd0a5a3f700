"""The REDI paper's grading rule, so that scores can sit beside the paper's Table 3.

The paper grades with rllm's math reward (agentica-project/rllm, ``rewards/math_reward.py`` and
``rewards/math_utils/utils.py``); this is an independent implementation of the same rule:

1. The response must contain ``</think>``, else it is wrong. The solution is the text after the
   first ``</think>`` (up to a second one, if any).
2. The answer is the content of the last ``\\boxed{...}`` in the solution, read by counting braces
   from its opening one; no box, an unbalanced last box, or ``\\boxed`` not followed by ``{`` is
   wrong (no earlier box is tried, ``\\fbox`` is never read).
3. A reference that contains ``\\boxed`` is reduced to its boxed content the same way.
4. Correct if the two answers are equal as strings after the Hendrycks MATH normalisation
   (``mathd_normalize``), or else if ``sympy_equal`` holds: a second, more aggressive
   normalisation (units, words, LaTeX to text with pylatexenc), tuples/intervals compared element
   by element, integers and unreduced fractions compared as strings, everything else accepted when
   ``sympy.simplify(reference - answer) == 0``. Expressions with more than two distinct letters or
   with braced/parenthesised exponents are never handed to sympy (rllm's guard against hangs).

This grader is stricter than the package's (math-verify) in places: ``(p,q)=(3,2)`` against
``(3,2)`` or ``0.0833...`` against ``\\frac{1}{12}`` are wrong here. Requires ``pylatexenc``.
"""

import logging
import re

# pylatexenc warns on every malformed macro ("\frac" with one argument); the rule just keeps the text.
logging.getLogger("pylatexenc").setLevel(logging.ERROR)

END_OF_THINKING = "</think>"
_BOX = "\\boxed"
_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
          "month", "year", "foot", "feet", "inch", "yard")
_LARGE_NUMBER_WORDS = (("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12"))
_TEXT_WRAPPER = re.compile(r"^\\text\{(?P<text>.+?)\}")
_UNSAFE_FOR_SYMPY = (re.compile(r"\^\{"), re.compile(r"\^\("), re.compile(r"\^[0-9]+\^"),
                     re.compile(r"\^[0-9][0-9]+"))
_TUPLE_BRACKETS = "()[]"
_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_THOUSANDS_COMMA = re.compile(r"(\d),(\d\d\d)($|\D)")
_UNICODE_TO_SYMPY = (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*"))


def paper_correct(response: str, reference: str, require_closed_thinking: bool = True) -> bool:
    """Return whether the response's final answer is right under the paper's rule (see module docstring)."""
    response = response.strip()
    if not response:
        return False
    if END_OF_THINKING in response:
        solution = response.partition(END_OF_THINKING)[2].partition(END_OF_THINKING)[0]
    elif require_closed_thinking:
        return False
    else:
        solution = response
    answer = paper_boxed_answer(solution)
    if answer is None:
        return False
    if _BOX in reference:
        reference = paper_boxed_answer(reference)
        if reference is None:
            return False
    return mathd_normalize(answer) == mathd_normalize(reference) or sympy_equal(answer, reference)


def paper_boxed_answer(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` of text, or None (see rule 2)."""
    start = text.rfind(_BOX)
    if start < 0:
        return None
    opening = start + len(_BOX)
    if not text.startswith("{", opening):
        return None
    depth = 0
    for j in range(opening, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1:j]
    return None


# --- Hendrycks MATH normalisation (string equality) ------------------------------------------


def mathd_normalize(answer: str) -> str:
    """Return the answer normalised as the Hendrycks MATH grader does (strip an outer \\text{} first).

    Inputs the normalisation cannot handle (several ``\\text{ `` units, a dangling ``\\sqrt`` or
    ``\\frac``) come back only stripped, as in the original.
    """
    answer = answer.strip()
    wrapped = _TEXT_WRAPPER.search(answer)
    if wrapped:
        answer = wrapped.group("text").strip()
    try:
        return _hendrycks_normalize(answer)
    except _CannotNormalize:
        return answer


class _CannotNormalize(Exception):
    pass


def _hendrycks_normalize(text: str) -> str:
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        text = text.replace(old, new)
    if "\\text{ " in text:  # a unit on the right: "5 \text{ cm}"
        pieces = text.split("\\text{ ")
        if len(pieces) != 2:
            raise _CannotNormalize
        text = pieces[0]
    text = text.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" -> "5"
        text = sides[1]
    text = _brace_single_argument(text, "\\sqrt", 1)
    text = text.replace(" ", "")
    text = _brace_single_argument(text, "\\frac", 2)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_fraction_as_frac(text)


def _brace_single_argument(text: str, command: str, arguments: int) -> str:
    """Return text with ``\\sqrt3`` -> ``\\sqrt{3}`` (1 argument) or ``\\frac12`` -> ``\\frac{1}{2}`` (2)."""
    pieces = text.split(command)
    out = [pieces[0]]
    for piece in pieces[1:]:
        if not piece:
            raise _CannotNormalize
        out.append(command)
        if piece[0] == "{":
            out.append(piece)
        elif arguments == 1:
            out.append("{" + piece[0] + "}" + piece[1:])
        elif len(piece) < 2:
            return text  # "\frac1": left as it was
        elif piece[1] == "{":
            out.append("{" + piece[0] + "}" + piece[1:])
        else:
            out.append("{" + piece[0] + "}{" + piece[1] + "}" + piece[2:])
    return "".join(out)


def _slash_fraction_as_frac(text: str) -> str:
    """Return ``\\frac{a}{b}`` for a plain ``a/b`` of integers, text unchanged otherwise."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


# --- sympy equality -----------------------------------------------------------------------------


def sympy_equal(answer: str, reference: str) -> bool:
    """Return whether answer equals reference under the second normalisation and sympy (rule 4)."""
    expected = sympy_normalize(reference)
    given = sympy_normalize(answer)
    if expected == given:
        return True
    if not given:
        return False
    expected_items = _tuple_items(expected)
    given_items = _tuple_items(given)
    if len(expected_items) > 1 and (expected[0] != given[0] or expected[-1] != given[-1]):
        return False  # (a, b) against [a, b]: different intervals
    if len(expected_items) != len(given_items):
        return False
    for want, got in zip(expected_items, given_items):
        if _FRACTION.search(want) and _FRACTION.search(got):
            same = want == got  # an unreduced fraction is not accepted
        elif _is_integer_text(want) != _is_integer_text(got):
            same = False  # an integer answer must be written as one
        else:
            same = _sympy_difference_is_zero(want, got)
        if not same:
            return False
    return True


def sympy_normalize(expression: str) -> str:
    """Return the expression in the plain form sympy_equal compares (lower case, no LaTeX, no units)."""
    wrapped = _TEXT_WRAPPER.search(expression)
    if wrapped:
        expression = wrapped.group("text")
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
                     *_LARGE_NUMBER_WORDS):
        expression = expression.replace(old, new)
    for unit in _UNITS:
        expression = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expression)
    expression = re.sub(r"\^ *\\circ", "", expression)
    if expression.startswith("{") and expression.endswith("}"):
        expression = expression[1:-1]
    expression = re.sub(r",\\! *", "", expression)
    if _is_integer_text(expression, strip_commas=False):
        expression = str(int(round(float(expression))))
    if "\\" in expression:
        expression = _latex_as_text(expression)
    expression = re.sub("- *", "-", expression)
    expression = re.sub("([0-9]) +([0-9])", "\\1+\\2", expression)  # mixed number "7 3/4" -> 7+3/4
    expression = expression.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer_text(expression):
        expression = str(int(float(expression.replace(",", ""))))
    return expression


def _latex_as_text(expression: str) -> str:
    """Return LaTeX rendered to plain text by pylatexenc (the expression unchanged if that fails)."""
    from pylatexenc.latex2text import LatexNodes2Text

    latex = expression.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    latex = latex.replace("\\frac", " \\frac")  # "3\frac12" is the mixed number 3 1/2
    try:
        text = LatexNodes2Text().latex_to_text(latex)
    except Exception:  # pylatexenc raises assorted errors on malformed input; the rule keeps the input
        return expression
    for old, new in _UNICODE_TO_SYMPY:
        text = text.replace(old, new)
    return text.strip()


def _is_integer_text(text: str, strip_commas: bool = True) -> bool:
    """Return whether text reads as a float within 1e-7 of an integer (thousands commas allowed)."""
    if strip_commas:
        text = _without_thousands_commas(text)
    try:
        value = float(text)
        return abs(value - int(round(value))) <= 1e-7
    except (ValueError, OverflowError):
        return False


def _without_thousands_commas(text: str) -> str:
    """Return text with commas between digit groups of three removed ("1,000" -> "1000"; not "(1,2)")."""
    while True:
        stripped = _THOUSANDS_COMMA.sub("\\1\\2\\3", text)
        if stripped == text:
            return text
        text = stripped


def _tuple_items(expression: str) -> list[str]:
    """Return the items of a tuple or interval "(a,b]" (no nested brackets), else [expression]."""
    expression = _without_thousands_commas(expression)
    if not expression:
        return []
    inner = expression[1:-1]
    if (len(expression) > 2 and expression[0] in _TUPLE_BRACKETS and expression[-1] in _TUPLE_BRACKETS
            and not any(bracket in inner for bracket in _TUPLE_BRACKETS)):
        return [item.strip() for item in inner.split(",")]
    return [expression]


def _sympy_difference_is_zero(expected: str, given: str) -> bool:
    """Return whether sympy simplifies (expected) - (given) to 0; False if it may not or cannot try."""
    difference = f"({expected})-({given})"
    letters = set(ch for ch in difference.replace("sqrt", "").replace("frac", "") if ch.isalpha())
    if len(letters) > 2 or any(pattern.search(difference) for pattern in _UNSAFE_FOR_SYMPY):
        return False
    import sympy
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    try:
        parsed = sympy_parser.parse_expr(difference.replace("^", "**"), transformations=transformations)
        return sympy.simplify(parsed) == 0
    except Exception:  # sympy raises many error types on unparsable input: not equal, as in the rule
        return False
