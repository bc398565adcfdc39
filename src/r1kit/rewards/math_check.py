"""`math_equal`: is a predicted answer equivalent to the gold answer?

Two stages. (1) In process, no sympy: both sides are normalized (``$``, ``\\left``, ``\\dfrac``, ``\\text``,
degrees, units and words after a number, ``x =``, thousands separators, AIME zero padding) and, when both
are plain numbers (integers, decimals, fractions, percentages, scientific notation), compared *exactly* as
rationals. Most answers are decided here in microseconds. (2) Otherwise a worker process parses both with
math-verify (latex2sympy2_extended) and compares symbolically: closed-form numbers exactly at 60 digits,
everything else (sets, intervals, tuples, matrices, equations, expressions) with math-verify's `verify`. The
worker is killed on timeout, so a pathological expression costs at most `timeout` seconds from any thread.

Hedges are rejected before either stage: "3 or 4" is not 3.

Left out: answers that need the question to interpret (e.g. "the second one"), unit conversion.
"""

from __future__ import annotations

import atexit
import json
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
# words split by whitespace or a dot: a nested `(?:[a-zA-Z]+\s*)+` backtracks exponentially on a long run of letters
_UNIT_WORDS = r"[a-zA-Z]+(?:(?:\.\s*|\s+)[a-zA-Z]+)*\.?\s*(?:\^?\{?[23]\}?)?"


def _strip_text_macros(s: str) -> str:
    for _ in range(3):  # \text{\textbf{..}} nests
        s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    return s


def normalize(s: str, drop_lhs: bool = True) -> str:
    """Canonical string form used by the fast path (spaces removed; see the module docstring).

    `drop_lhs` turns "x = 5" into "5"; `math_equal` sets it only when the other side is not an equation.
    """
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = re.sub(r"\\(?:left|right|displaystyle)\b", "", s)
    s = re.sub(r"\\[,;:! ]|\\q?quad\b", " ", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac").replace("−", "-")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = _strip_text_macros(s)
    s = s.strip().rstrip(".").strip()
    if drop_lhs:
        s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[^=]+$)", "", s)  # "x = 5" -> "5"
    m = re.fullmatch(rf"({_NUMBER}%?)\s+{_UNIT_WORDS}", s)  # "5 cm", "12 square units"
    if m and not re.search(r"\bor\b|\band\b", s):
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s


def to_number(s: str) -> tuple[Fraction, bool] | None:
    """A normalized string as (exact value, had a percent sign), or None when it is not a plain number."""
    pct = s.endswith("%")
    s = s[:-1] if pct else s
    try:
        if re.fullmatch(_NUMBER + r"(?:[eE][-+]?\d+)?", s):
            return Fraction(s), pct
        m = re.fullmatch(rf"({_NUMBER})(?:\\times|\\cdot|\*)10\^\{{?([-+]?\d+)\}}?", s)
        if m:
            return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)), pct
        m = (re.fullmatch(r"([-+]?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", s)
             or re.fullmatch(r"([-+]?)(\d+)()/(\d+)()", s))
        if m:
            sign, num, den = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
            if int(den) != 0:
                return Fraction(int(num), int(den)) * (-1 if sign == "-" else 1), pct
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _numbers_equal(p: tuple[Fraction, bool], g: tuple[Fraction, bool]) -> bool:
    (pv, ppct), (gv, gpct) = p, g
    if pv == gv:
        return True
    # "50%" vs "0.5": accepted only when one side literally carries the percent sign.
    return (ppct and not gpct and pv / 100 == gv) or (gpct and not ppct and gv / 100 == pv)


def _is_hedge(pred: str, gold: str) -> bool:
    words = r"\bor\b|\\pm(?![a-z])|\\mp\b"
    return bool(re.search(words, pred)) and not re.search(words, gold)


class _WorkerPool:
    """Idle math workers, reused across calls; any thread may use it. A worker that overruns is killed."""

    def __init__(self):
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "r1kit.rewards._math_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if not _wait_readable(proc, 120.0) or proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError("math worker failed to start")
        return proc

    def judge(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            proc = self._idle.pop() if self._idle else None
        if proc is None or proc.poll() is not None:
            proc = self._spawn()
        try:
            proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")
            proc.stdin.flush()
            ok = _wait_readable(proc, timeout)
            reply = proc.stdout.readline() if ok else ""
        except OSError:
            reply = ""
        if not reply:  # timed out or died: never reuse it
            proc.kill()
            proc.wait()
            return False
        with self._lock:
            self._idle.append(proc)
        return bool(json.loads(reply).get("eq"))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            proc.kill()
            proc.wait()


def _wait_readable(proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if select.select([proc.stdout], [], [], left)[0]:
            return True


_pool = _WorkerPool()


def math_equal(pred: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """True when `pred` is an acceptable answer for reference `gold` (LaTeX or plain strings).

    Decided in process when possible; otherwise in a worker process with a hard `timeout` (seconds), after
    which the answer counts as wrong. Safe to call from any thread.
    """
    if pred is None or gold is None:
        return False
    if _is_hedge(_strip_text_macros(str(pred)), _strip_text_macros(str(gold))):
        return False
    pred, gold = str(pred), str(gold)
    p, g = normalize(pred, drop_lhs="=" not in gold), normalize(gold, drop_lhs="=" not in pred)
    if not p or not g:
        return False
    if p == g:
        return True
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn)
    return _pool.judge(p, g, timeout)
