"""The paper's grader (rllm's math reward rule), case by case.

The expected verdicts were produced by running rllm's own grader code (rllm-org/rllm,
rllm/rewards/math_utils/utils.py at 9beb6e0f) on these traces. Outside this suite, the two were
also compared on 263 traces (this table and the package checker's table, each also with an earlier
box), 3,000 random LaTeX-ish strings (both normalisations), 1,800 random sympy comparisons and
1,500 random traces: no difference.
"""

import pytest

pytest.importorskip("pylatexenc")

from redi_megatron.data.paper_grading import paper_boxed_answer, paper_correct  # noqa: E402

CASES = [
    ("(p,q)=(3,2)", "(3,2)", False), ("0.0833333", "\\frac{1}{12}", False), ("3", "\\frac{6}{2}", False),
    ("\\frac{6}{2}", "3", False), ("1,000", "1000", True), ("10.0", "10", True), ("x=5", "5", True),
    ("k = 5", "5", True), ("\\text{B}", "B", True), ("5\\text{ cm}", "5", True), ("\\sqrt3", "\\sqrt{3}", True),
    ("\\frac12", "0.5", True), ("2/4", "\\frac{1}{2}", False), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("3\\frac{1}{2}", "\\frac{7}{2}", True), ("7 3/4", "\\frac{31}{4}", True), ("\\$5", "5", True),
    ("5 million", "5000000", False), ("(1,2]", "(1, 2]", True), ("[1,2)", "(1,2)", False), ("(1,2)", "(1, 2)", True),
    ("\\infty", "\\infty", True), ("2\\pi", "\\pi \\cdot 2", True), ("\\sqrt", "1", False), ("\\frac1", "1", False),
    ("a \\text{ b} \\text{ c}", "a", False), (".5", "\\frac{1}{2}", True), ("x^2+2x+1", "(x+1)^2", True),
    ("\\dfrac{3}{4}", "0.75", True), ("10^{-2}", "0.01", True), ("-\\frac{1}{3}", "\\frac{-1}{3}", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True), ("90^\\circ", "90", True), ("A", "a", True),
    ("\\textbf{(C)}", "C", True), ("1.5", "\\frac{3}{2}", True), ("3 hours", "3", True), ("2 and 3", "2, 3", True),
    ("2 or 3", "(2, 3)", False), ("\\{1,2\\}", "\\{2,1\\}", False), ("x \\in (1,2)", "(1,2)", False), ("", "1", False),
]


@pytest.mark.parametrize("answer, reference, correct", CASES)
def test_verdicts_match_the_paper_grader(answer, reference, correct):
    assert paper_correct("<think>t</think> So \\boxed{%s}." % answer, reference) is correct


@pytest.mark.parametrize("trace, correct", [
    ("no thinking \\boxed{1}", False),                          # no </think>: wrong
    ("<think>a</think> \\boxed{1} </think> \\boxed{2}", True),  # the text after the first </think>
    ("<think>a</think> \\boxed 1", False),                      # \boxed must take a braced argument
    ("<think>a</think> \\fbox{1}", False),                      # \fbox is never read
    ("<think>a</think> \\boxed{1} and \\boxed{2", False),       # the last box is unbalanced: no earlier box
    ("   ", False),
])
def test_extraction_rules(trace, correct):
    assert paper_correct(trace, "1") is correct


def test_boxed_reference_and_unclosed_thinking_option():
    assert paper_correct("<think>a</think> \\boxed{4}", "so \\boxed{4}")
    assert paper_correct("\\boxed{4}", "4", require_closed_thinking=False)
    assert paper_boxed_answer("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
