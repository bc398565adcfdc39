"""math_equal against hand-labelled cases, grouped by the rule each group exercises; extraction tests.

The newer groups (complex numbers, variables with coefficients, matrices and vectors, explanations after the
answer) also check each label against an independent reference, math-verify or sympy, wherever that
reference is right: the label itself is checked, not only r1kit against it.
"""

import threading
import time

import pytest

from r1kit.rewards import extract_answer, extract_choice, math_equal
from r1kit.rewards.math_check import normalize

# (prediction, gold, expected). Each group states why.
CASES = {
    # integers with separators and padding: AIME golds are zero-padded, answers use thousands separators
    "integers": [
        ("42", "42", True), ("025", "25", True), ("25", "025", True), ("007", "7", True), ("1,000", "1000", True),
        ("1000", "1{,}000", True), ("1\\,000", "1000", True), ("1 000", "1000", True), ("-3", "-3", True),
        ("+3", "3", True), ("1,234,567", "1234567", True), ("43", "42", False), ("-42", "42", False),
        ("420", "42", False), ("1,001", "1000", False), ("0", "00", True), ("12", "21", False),
    ],
    # decimals and fractions are compared exactly, as rationals
    "fractions_decimals": [
        ("0.5", "\\frac{1}{2}", True), ("\\dfrac{1}{2}", "0.5", True), ("\\tfrac12", "1/2", True),
        ("1/2", "\\frac{1}{2}", True), ("\\frac{2}{4}", "\\frac{1}{2}", True), ("-\\frac{3}{4}", "-0.75", True),
        (".5", "0.5", True), ("0.50", "0.5", True), ("\\frac34", "0.75", True), ("\\frac{12}{3}", "4", True),
        ("0.333", "\\frac{1}{3}", False), ("\\frac{1}{3}", "0.33", False), ("\\frac{3}{4}", "\\frac{4}{3}", False),
        ("1/2", "2", False), ("0.25", "\\frac{1}{2}", False), ("\\frac{-1}{2}", "-0.5", True),
        ("2.0", "2", True), ("2.01", "2", False),
    ],
    # percentages: accepted against the fraction only when the percent sign is literally there
    "percent": [
        ("50\\%", "50", True), ("50%", "50\\%", True), ("50\\%", "0.5", True), ("0.5", "50\\%", True),
        ("50", "0.5", False), ("25\\%", "0.5", False), ("12.5\\%", "12.5", True),
    ],
    # scientific notation
    "scientific": [
        ("1.5\\times10^{3}", "1500", True), ("1.5e3", "1500", True), ("3\\times 10^{-2}", "0.03", True),
        ("2E2", "200", True), ("1.5\\times10^{4}", "1500", False), ("1e-3", "0.01", False),
    ],
    # units, words, degrees, money and "x =" around a number
    "units_and_words": [
        ("5 cm", "5", True), ("5\\text{ cm}", "5", True), ("5", "5\\text{ cm}", True), ("x = 5", "5", True),
        ("x=5", "5", True), ("12 square units", "12", True), ("90^\\circ", "90", True), ("90^{\\circ}", "90", True),
        ("90°", "90", True), ("\\$18.90", "18.90", True), ("\\text{18}", "18", True), ("\\textbf{7}", "7", True),
        ("6 cm", "5", False), ("45^\\circ", "90", False), ("x = 6", "5", False), ("\\$19", "18", False),
        ("5.", "5", True), ("$5$", "5", True), ("\\(5\\)", "5", True),
    ],
    # radicals, pi and other closed forms: symbolic equality
    "radicals_pi": [
        ("\\sqrt{8}", "2\\sqrt{2}", True), ("2\\sqrt{2}", "\\sqrt{8}", True), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
        ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True), ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("2\\pi", "\\pi \\cdot 2", True), ("\\sqrt{3}", "\\sqrt{2}", False), ("\\pi", "3.14", False),
        ("\\frac{\\pi}{3}", "\\frac{\\pi}{6}", False), ("3\\sqrt{3}", "\\sqrt{27}", True),
        ("\\sqrt{12}", "3\\sqrt{2}", False), ("e^{2}", "e^2", True),
    ],
    # big exact numbers: math-verify's rounding calls these equal
    "exact_big_numbers": [
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False), ("\\frac{1}{2004!}", "\\frac{1}{2004!}", True),
        ("2^{100}", "1267650600228229401496703205376", True), ("2^{100}", "1267650600228229401496703205377", False),
        ("10^{30}+1", "10^{30}", False), ("\\binom{10}{3}", "120", True), ("5!", "120", True),
        ("\\frac{7}{0}", "7", False),
    ],
    # algebraic expressions and equations
    "expressions": [
        ("x^2+2x+1", "(x+1)^2", True), ("(x+1)^2", "x^2+2x+1", True), ("2x+2", "2(x+1)", True),
        ("x^2-1", "(x-1)(x+1)", True), ("x^2+1", "(x+1)^2", False), ("2x", "x^2", False),
        ("\\frac{x}{2}", "0.5x", True), ("a+b", "b+a", True), ("a-b", "b-a", False),
        ("y=2x+1", "2x+1=y", True), ("y=2x+1", "y=2x+2", False), ("\\sin^2 x+\\cos^2 x", "1", True),
    ],
    # sets are unordered, tuples are ordered, intervals keep their brackets (Qwen's grader misses this)
    "sets_tuples_intervals": [
        ("\\{1,2\\}", "\\{2,1\\}", True), ("\\{1,2,3\\}", "\\{1,2\\}", False), ("(1,2)", "(1,2)", True),
        ("(2,1)", "(1,2)", False), ("[2,5]", "[2,5]", True), ("[2,5)", "[2,5]", False), ("[2,5]", "[2,5)", False),
        ("(2,5]", "(2,5]", True), ("(-\\infty, 3)", "(-\\infty,3)", True), ("(-\\infty,3]", "(-\\infty,3)", False),
        ("[0,1]\\cup[2,3]", "[0,1]\\cup[2,3]", True), ("[0,1]\\cup[2,3]", "[0,1]\\cup[2,4]", False),
        ("(3,4)", "(3, 4)", True), ("\\{\\}", "\\{1\\}", False),
    ],
    # matrices compare element-wise
    "matrices": [
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        ("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
        ("\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
        ("\\begin{pmatrix}\\frac12\\\\1\\end{pmatrix}", "\\begin{pmatrix}0.5\\\\1\\end{pmatrix}", True),
    ],
    # LaTeX spelling variants that must not change the value
    "latex_variants": [
        ("\\left(1,2\\right)", "(1,2)", True), ("\\displaystyle\\frac{1}{2}", "0.5", True),
        ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt{3}}{2}", True), ("2\\cdot 3", "6", True), ("2\\times 3", "6", True),
        ("\\frac{6}{4}", "\\frac{3}{2}", True), ("3^{2}", "9", True), ("\\sqrt[3]{27}", "3", True),
        ("\\log_2 8", "3", True), ("|-5|", "5", True), ("\\frac{5}{4}", "\\frac{3}{2}", False),
        ("3^{3}", "9", False), ("\\sqrt[3]{27}", "9", False), ("\\log_2 8", "4", False), ("2\\cdot 4", "6", False),
    ],
    # answers with the wrong sign, magnitude or form of a correct-looking value
    "near_misses": [
        ("-\\sqrt{2}", "\\sqrt{2}", False), ("\\frac{1}{2}", "-\\frac{1}{2}", False), ("100", "10", False),
        ("0.05", "0.5", False), ("x+1", "x-1", False), ("\\{1,2\\}", "\\{1,3\\}", False), ("(1,2,3)", "(1,2)", False),
        ("2\\pi", "\\pi", False), ("\\sqrt{2}+1", "\\sqrt{2}-1", False),
    ],
    # hedges and non-answers earn nothing (PRM800K's grader accepts "3 or 4" for 3)
    "hedges_and_empty": [
        ("3 \\text{ or } 4", "3", False), ("3 or 4", "3", False), ("3 \\text{ (or 4)}", "3", False),
        ("4 or 3", "3", False), ("\\pm 2", "2", False), ("", "3", False), ("   ", "3", False), ("3", "", False),
        (None, "3", False), ("\\pm 2", "\\pm 2", True), ("x = 3 or x = 4", "3", False),
    ],
}
FLAT = [(group, *c) for group, cases in CASES.items() for c in cases]


def test_enough_labelled_cases():
    assert len(FLAT) >= 150
    assert sum(not c[3] for c in FLAT) >= 50  # negatives matter as much as positives


@pytest.mark.parametrize(("group", "pred", "gold", "expected"), FLAT,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FLAT)])
def test_math_equal(group, pred, gold, expected):
    assert math_equal(pred, gold, timeout=10) is expected


def test_fast_path_needs_no_worker():
    t = time.perf_counter()
    for _ in range(1000):
        assert math_equal("1,000", "1000") and not math_equal("0.333", "\\frac13")
    assert time.perf_counter() - t < 1.0  # 2000 checks in under a second: decided in process


@pytest.mark.parametrize("garbage", ["5 " + "a" * 3000 + "1", "5 " + "a." * 3000 + "1", "5 " + "ab " * 3000 + "!"])
def test_long_letter_runs_are_linear_not_catastrophic(garbage):
    """A small model's reply once held a long run of letters after a number: the unit-stripping regex used to
    backtrack exponentially on it (22 letters: 1 s; 40: hours), hanging a MATH-500 evaluation in grading."""
    t = time.perf_counter()
    normalize(garbage)
    assert time.perf_counter() - t < 0.1
    t = time.perf_counter()
    assert not math_equal(garbage, "7", timeout=1.0)  # what the fast path cannot decide is bounded by the kill
    assert time.perf_counter() - t < 3.0


def test_hard_timeout_from_a_thread():
    """A tower of powers would take forever in sympy; the worker is killed and the answer is wrong."""
    result = {}

    def check():
        t = time.perf_counter()
        result["eq"] = math_equal("10^{10^{10^{10}}}", "2^{3^{4^{5}}}", timeout=1.0)
        result["s"] = time.perf_counter() - t

    th = threading.Thread(target=check)
    th.start()
    th.join(30)
    assert result["eq"] is False and result["s"] < 8
    assert math_equal("\\sqrt{8}", "2\\sqrt{2}")  # a fresh worker replaces the killed one


# ------------------------------------------------------------ extraction
@pytest.mark.parametrize(("text", "expected"), [
    ("<think>so 2+2=4</think>The answer is \\boxed{4}.", "4"),
    ("<think>x</think>\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("<think>x</think>so \\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("<think>x</think>\\fbox{7}", "7"),
    ("<think>x</think>\\boxed 7", "7"),
    ("<think>x</think>first \\boxed{5} then again \\boxed{5}", "5"),
    ("<think>x</think>first \\boxed{5} then \\boxed{6}", None),  # two different answers: a hedge
    ("<think>x</think>\\boxed{}", None),  # empty box
    ("<think>the answer is \\boxed{9}</think>I am not sure.", None),  # only inside the reasoning
    ("<think>the answer is \\boxed{9}", None),  # never closed: everything is reasoning
    ("prefilled reasoning \\boxed{1}</think>\\boxed{2}", "2"),  # <think> prefilled by the template
    ("<think>x</think>The answer is 12.", "12"),
    ("<think>x</think>Answer: $3\\sqrt{2}$", "3\\sqrt{2}"),
    ("<think>x</think>**Final Answer**\n$\\boxed{17}$", "17"),
    ("<think>x</think>**Final Answer:** 17", "17"),
    ("<think>x</think>The final answer is 8. Hope it helps.", "8"),
    ("No think tags, \\boxed{3}", "3"),
    ("<think>x</think>I could not solve it.", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>x</think>Answer: b", "B"),
    ("<think>x</think>The answer is (C).", "C"),
    ("<think>x</think>\\boxed{D}", "D"),
    ("<think>x</think>\\boxed{\\text{(A)}}", "A"),
    ("<think>x</think>After all that,\n(B)", "B"),
    ("<think>x</think>A, B, C or D", None),  # listing every option
    ("<think>x</think>The answer is A or B.", None),
    ("<think>x</think>Answer: E", None),  # outside the 4 choices
    ("<think>Answer: A</think>", None),  # only in the reasoning
])
def test_extract_choice(text, expected):
    assert extract_choice(text, n_choices=4) == expected


# ------------------------------------------------------------ labelled cases checked against a reference
# (pred, gold, expected, reference). reference "mv": math-verify's own parse/verify of `$pred$` and `$gold$`;
# ("sympy", p, g): the two answers transcribed into sympy by hand; the reference must agree with the label.
MV = "mv"
REFERENCED = {
    # `i` is a variable to both sides, never a unit: "2 i" is not 2
    "complex_numbers": [
        ("2 i", "2", False, MV), ("2i", "2", False, MV), ("3 i", "3", False, MV), ("2 i", "2i", True, ("sympy", "2*I", "2*I")),
        ("2+3i", "3i+2", True, MV), ("2 + 3 i", "2+3i", True, ("sympy", "2 + 3*I", "3*I + 2")),
        ("2-3i", "2+3i", False, MV), ("-i", "i", False, MV), ("i", "1", False, MV), ("1-i", "1+i", False, MV),
        ("\\frac{1+i}{2}", "\\frac{1}{2}+\\frac{i}{2}", True, MV), ("5i", "-5i", False, MV),
    ],
    # a letter after a number is a variable unless it is a listed unit: "3 x" is 3x, "x = 2 y" is not 2
    "variables_with_coefficients": [
        ("3 x", "3x", True, MV), ("3x", "3 x", True, MV), ("3 x", "3", False, MV), ("x = 2 y", "2", False, MV),
        ("x = 2 y", "2y", True, MV), ("2 y", "2", False, MV), ("2 n + 1", "2n+1", True, MV), ("2 n", "2", False, MV),
        ("4 a b", "4ab", True, MV), ("3 \\pi", "3\\pi", True, MV), ("3 \\pi", "3", False, MV),
        # math-verify's own unit list reads t, s, m and "ab" as units here; sympy does not
        ("4 a b", "4", False, ("sympy", "4*a*b", "4")), ("2 t", "2", False, ("sympy", "2*t", "2")),
        ("2 s", "2", False, ("sympy", "2*s", "2")), ("k = 3 m", "3", False, ("sympy", "3*m", "3")),
        # listed units go, in text markup or as words after a number
        ("5 \\text{ cm}", "5", True, MV), ("5\\,\\text{cm}", "5", True, MV), ("5\\text{ m}", "5", True, MV),
        ("12 \\text{ square units}", "12", True, MV), ("7 \\text{ inches}", "7", True, MV),
        ("10\\text{ cm}^2", "10", True, MV), ("6\\sqrt{2}\\text{ cm}", "6\\sqrt{2}", True, MV),
        ("1,000 \\text{ dollars}", "1000", True, MV), ("2 \\text{ hours}", "2", True, MV),
        ("5 cm", "5", True, ("sympy", "5", "5")), ("3 sq. ft", "3", True, ("sympy", "3", "3")),
        ("6 cm", "5", False, ("sympy", "6", "5")),
    ],
    # LaTeX spacing, `\\` row breaks (followed by a space or a newline) and `&` do not change a matrix
    "matrices_vectors": [
        ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True, MV),
        ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", True, MV),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, MV),
        ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False, MV),
        ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False, MV),
        ("\\begin{bmatrix} 1 & 2 \\\\\n 3 & 4 \\end{bmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True,
         ("sympy", "Matrix([[1, 2], [3, 4]])", "Matrix([[1, 2], [3, 4]])")),
        ("\\begin{pmatrix} -1 \\\\ \\frac{1}{2} \\end{pmatrix}", "\\begin{pmatrix}-1\\\\0.5\\end{pmatrix}", True, MV),
        ("\\begin{pmatrix} 1 & 2 & 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}", False, MV),
        ("\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False, MV),
        ("\\begin{pmatrix}\\,1\\, & 0 \\\\ 0 & 1\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", True, MV),
        ("\\begin{pmatrix} 0 & 1 \\\\ 1 & 0 \\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", False, MV),
        ("\\begin{pmatrix} x \\\\ 2 y \\end{pmatrix}", "\\begin{pmatrix}x\\\\2y\\end{pmatrix}", True, MV),
    ],
}
REF_FLAT = [(group, *c) for group, cases in REFERENCED.items() for c in cases]


def _reference(pred: str, gold: str, reference) -> bool:
    if reference == MV:
        mv = pytest.importorskip("math_verify")
        return bool(mv.verify(mv.parse(f"${gold}$"), mv.parse(f"${pred}$")))
    sympy = pytest.importorskip("sympy")
    _, p, g = reference
    a, b = sympy.sympify(p), sympy.sympify(g)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        return isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase) and a.shape == b.shape and a == b
    return sympy.simplify(a - b) == 0


@pytest.mark.parametrize(("group", "pred", "gold", "expected", "reference"), REF_FLAT,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REF_FLAT)])
def test_math_equal_with_reference(group, pred, gold, expected, reference):
    assert _reference(pred, gold, reference) is expected  # the label, checked independently
    assert math_equal(pred, gold, timeout=10) is expected


# A stated answer followed by its justification: (reply after </think>, gold, extracted, correct, reference).
# reference "mv": math-verify reading the whole reply agrees; None: math-verify reads the last number of the
# reply instead, so it is no reference there (the extracted answer is checked by hand).
EXPLAINED = [
    ("The answer is 12 because 3 * 4 = 12.", "12", "12", True, MV),
    ("The answer is 12 because 3 \\cdot 4 = 12.", "12", "12", True, MV),
    ("The answer is $12$ since $3 \\cdot 4 = 12$.", "12", "12", True, MV),
    ("The answer is 7, since 3 + 4 = 7.", "7", "7", True, MV),
    ("The answer is 5 as 10 / 2 = 5.", "5", "5", True, MV),
    ("The answer is 6. Indeed 2 + 4 = 6.", "6", "6", True, MV),
    ("The answer is 4, which is 2 squared.", "4", "4", True, MV),
    ("The answer is 10 cm since each side is 5 cm.", "10", "10 cm", True, MV),
    ("The answer is 3.5 because 7 / 2 = 3.5", "3.5", "3.5", True, MV),
    ("The answer is 1,000 because 10^3 = 1000.", "1000", "1,000", True, MV),
    ("Final answer: $\\frac{1}{2}$, which is 0.5.", "\\frac12", "\\frac{1}{2}", True, MV),
    ("The answer is 15 because 3 * 5 = 15.", "16", "15", False, MV),
    ("The answer is 8 because 2 * 4 = 8, so not 9.", "9", "8", False, MV),
    ("The answer is 6. Indeed 2 + 5 = 7.", "6", "6", True, None),
    ("The answer is $x = 3$ because $2x = 6$.", "3", "x = 3", True, None),
    ("The answer is 3 or 4 because both work.", "3", "3 or 4", False, None),  # a hedge stays a hedge
    ("The answer is 3. No wait, the answer is 4.", "4", "4", True, None),  # the last statement wins
]


@pytest.mark.parametrize(("reply", "gold", "extracted", "correct", "reference"), EXPLAINED)
def test_explanations_after_the_answer(reply, gold, extracted, correct, reference):
    if reference == MV:
        mv = pytest.importorskip("math_verify")
        assert bool(mv.verify(mv.parse(f"${gold}$"), mv.parse(reply))) is correct
    found = extract_answer(f"<think>working</think>{reply}")
    assert found == extracted
    assert math_equal(found, gold, timeout=10) is correct


@pytest.mark.parametrize("garbage", ["5 " + "cm " * 3000 + "!", "5 " + "cm" * 3000, "1" * 5000 + "!",
                                     "5 " + "cm." * 3000 + "x", "5 \\text{" + "cm " * 3000 + "!}"])
def test_unit_words_are_linear_too(garbage):
    t = time.perf_counter()
    normalize(garbage)
    assert time.perf_counter() - t < 0.1


# ------------------------------------------------------------ answers of prefilled and malformed replies
@pytest.mark.parametrize(("text", "prefilled", "expected"), [
    ("thinking: maybe \\boxed{42}", True, None),  # truncated after the template's <think>: all reasoning
    ("thinking: maybe \\boxed{42}", False, "42"),  # no block at all: all answer
    ("thinking \\boxed{41}</think>\\boxed{42}", True, "42"),
    ("thinking \\boxed{41}</think>\\boxed{42}", False, "42"),  # an undetected prefill still closes the block
    ("a</think>\\boxed{42}</think>\\boxed{43}", True, None),  # double-closed: both boxes are in the answer part
    ("a \\boxed{41}</think>so</think>The answer is 42.", True, "42"),
])
def test_extract_answer_is_prefill_aware(text, prefilled, expected):
    assert extract_answer(text, prefilled_think=prefilled) == expected


def test_extract_choice_is_prefill_aware():
    assert extract_choice("I lean to Answer: B", prefilled_think=True) is None
    assert extract_choice("I lean to\nAnswer: B", prefilled_think=False) == "B"


@pytest.mark.parametrize("tail", ["\\boxed{" * 20000, "\\boxed " * 20000, "The answer is 12" + " " * 20000 + "x",
                                  "The answer is " + "\\(" * 20000, "Answer:" + " " * 20000 + "x",
                                  "\n" * 20000 + "Answer: 3"])
def test_extraction_is_linear_on_degenerate_replies(tail):
    """Small models repeat themselves: unclosed boxes, blank runs and unmatched math openers once cost quadratic
    (minutes for 20k characters) in box matching, math-delimiter pairing and the explanation cut."""
    t = time.perf_counter()
    extract_answer(f"<think>x</think>{tail}")
    assert time.perf_counter() - t < 1.0
