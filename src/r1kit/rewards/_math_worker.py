"""Worker process for symbolic answer checks; `r1kit.rewards.math_check` kills it when a check overruns.

Protocol: prints ``ready`` once imports are done, then reads JSON lines ``{"pred", "gold"}`` and answers
``{"eq": bool}`` per line. math-verify's own signal-based timeouts are disabled: the parent's kill is the limit.
"""

from __future__ import annotations

import json
import sys

import sympy
from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, NormalizationConfig

# units=False: math-verify's own unit stripping swallows variables ("2t" -> 2, "4ab" -> 4, "k = 3m" -> k = 3);
# `math_check.normalize` has already removed units, from an explicit list, before a pair reaches this worker.
_NORMALIZATION = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True,
                                     boxed="all", equations=False)
_CONFIG = [LatexExtractionConfig(boxed_match_priority=0, normalization_config=_NORMALIZATION),
           ExprExtractionConfig()]


def _exact_numbers(a, b) -> bool | None:
    """Exact comparison of two closed-form numbers (no floats, no symbols) at 60 significant digits.

    math-verify compares numbers after rounding, so 1/2004! and 1/2006! both look like 0 to it.
    None when this rule does not apply.
    """
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return None
    if not (a.is_number and b.is_number) or a.has(sympy.Float) or b.has(sympy.Float):
        return None
    try:
        va, vb = sympy.N(a, 60), sympy.N(b, 60)
        if not (va.is_finite and vb.is_finite):  # zoo, oo, nan: only identical forms are equal
            return a == b
        scale = max(abs(va), abs(vb))
        diff = abs(sympy.N(a - b, 60))
    except (TypeError, ValueError, ArithmeticError):
        return None
    if not (diff.is_number and scale.is_number) or diff.has(sympy.nan):
        return None
    return bool(diff == 0 or diff <= scale * sympy.Float("1e-40"))


def judge(pred: str, gold: str) -> bool:
    gold_p = parse(f"${gold}$", extraction_config=_CONFIG, parsing_timeout=None)
    pred_p = parse(f"${pred}$", extraction_config=_CONFIG, parsing_timeout=None)
    if not gold_p or not pred_p:
        return False
    exact = _exact_numbers(gold_p[0], pred_p[0])
    if exact is not None:
        return exact
    return bool(verify(gold_p, pred_p, timeout_seconds=None))


def main() -> None:
    sys.set_int_max_str_digits(0)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            eq = judge(req["pred"], req["gold"])
        except Exception:  # noqa: BLE001 (an unparseable answer is simply not equal)
            eq = False
        print(json.dumps({"eq": eq}), flush=True)


if __name__ == "__main__":
    main()
