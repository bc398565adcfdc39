"""`math_equal`: is a predicted answer equivalent to the gold answer?

Two stages. (1) In process, no sympy: both sides are normalized (``$``, ``\\left``, ``\\dfrac``, ``\\text``,
spacing commands, degrees, a unit after a value, ``x =``, thousands separators, AIME zero padding) and, when both
are plain numbers (integers, decimals, fractions, percentages, scientific notation), compared *exactly* as
rationals. Most answers are decided here in microseconds. (2) Otherwise a worker process parses both with
math-verify (latex2sympy2_extended) and compares symbolically: closed-form numbers exactly at 60 digits,
everything else (sets, intervals, tuples, matrices, equations, expressions) with math-verify's `verify`. The
worker is killed on timeout, so a pathological expression costs at most `timeout` seconds from any thread.

Units are words of an explicit list (`_UNITS`; single letters such as ``m`` only inside ``\\text{}``), never
"any letters": ``2 i``, ``3 x`` and ``x = 2 y`` keep their variable, so they are not 2, 3 and 2. The worker
runs math-verify with its own unit stripping off for the same reason (it reads ``2t`` as 2). All regexes here
match in linear time: grading must never hang on a long run of letters in a reply.

Hedges are rejected before either stage: "3 or 4" is not 3.

Left out: answers that need the question to interpret (e.g. "the second one"), unit conversion, counting
nouns that are not on the unit list ("12 students" is not 12), and ``i`` as the imaginary unit (it is a
symbol like any other letter: ``2 - 3i`` is not ``2 + 3i``, but ``(1+i)^2`` is not simplified to ``2i``).
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

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"  # one way to match a digit run: no quadratic backtracking

# Units are words from this list, never "any letters": `2 i`, `3 x` and `x = 2 y` keep their variable.
_UNITS = """
    mm cm km meter meters metre metres millimeter millimeters centimeter centimeters kilometer kilometers
    inch inches ft foot feet yd yard yards mi mile miles
    ml liter liters litre litres gallon gallons gal quart quarts pint pints cup cups cc
    mg kg gram grams kilogram kilograms milligram milligrams lb lbs pound pounds oz ounce ounces ton tons
    sec secs second seconds min mins minute minutes hr hrs hour hours day days week weeks month months
    year years yr yrs
    dollar dollars cent cents euro euros way ways people
    degree degrees deg radian radians rad percent
    mph kph kmh per square sq cubic cu unit units
"""
# Single letters are units only inside text markup (`5\text{ m}`); in math mode they are variables.
_TEXT_ONLY_UNITS = "m s g h l in"
_SEP = r"(?:\s*[./]\s*|\s+)"  # between unit words: "sq. ft", "km/h", "square units"
_POWER = r"(?:\^\s*\{?[23]\}?)?"


def _unit_phrase(units: str) -> re.Pattern:
    """One or more unit words, each with an optional power. Linear time: words come from a fixed list, each
    must end at a non-letter and be preceded by a separator, so there is one way to match (no backtracking
    blow-up on long letter runs, which a nested "letters, optional space, repeated" pattern had)."""
    alternatives = "|".join(sorted(map(re.escape, units.split()), key=len, reverse=True))
    word = rf"(?:{alternatives})(?![a-zA-Z]){_POWER}"
    return re.compile(rf"{word}(?:{_SEP}{word})*\.?", re.IGNORECASE)


_UNIT_PHRASE = _unit_phrase(_UNITS)
_TEXT_UNIT_PHRASE = _unit_phrase(_UNITS + " " + _TEXT_ONLY_UNITS)
_TEXT_UNIT = re.compile(rf"\\(?:text|textrm|mathrm|mbox)\s*\{{([^{{}}]*)\}}\s*{_POWER}$")  # at the very end
_NUMBER_UNIT = re.compile(r"([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)%?)\s*([a-zA-Z].*)")


def _strip_text_macros(s: str) -> str:
    for _ in range(3):  # \text{\textbf{..}} nests
        s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    return s


def _strip_text_unit(s: str) -> str:
    """A listed unit in text markup after any value: "6\\sqrt{2}\\text{ cm}^2" -> "6\\sqrt{2}"."""
    m = _TEXT_UNIT.search(s)
    head = s[: m.start()].strip() if m else ""
    return head if head and _TEXT_UNIT_PHRASE.fullmatch(m.group(1).strip()) else s


def _strip_number_unit(s: str) -> str:
    """A unit word after a plain number: "5 cm" -> "5", "12 square units" -> "12"; "2 i" and "3 x" stay."""
    m = _NUMBER_UNIT.fullmatch(s)
    return m.group(1) if m and _UNIT_PHRASE.fullmatch(m.group(2)) else s


def _latex_spacing(s: str) -> str:
    """Spacing commands (``\\,`` ``\\ `` ``\\quad``) become spaces; a ``\\\\`` row break stays, even before a space
    (read left to right, ``\\\\ `` is a row break then a space, not a backslash then ``\\ ``)."""
    return re.sub(r"\\\\|\\[,;:! ]|\\q?quad\b", lambda m: m.group() if m.group() == "\\\\" else " ", s)


def normalize(s: str, drop_lhs: bool = True) -> str:
    """Canonical string form used by the fast path (spaces removed; see the module docstring).

    `drop_lhs` turns "x = 5" into "5"; `math_equal` sets it only when the other side is not an equation.
    """
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = re.sub(r"\\(?:left|right|displaystyle)\b", "", s)
    s = _latex_spacing(s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac").replace("−", "-")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = s.strip().rstrip(".").strip()
    if drop_lhs:
        s = re.sub(r"^[a-zA-Z]\s*=\s*(?=[^=]+$)", "", s)  # "x = 5" -> "5"
    s = _strip_text_unit(s)  # before the text macros go: `\text{ m}` marks a unit, a bare `m` is a variable
    s = _strip_number_unit(_strip_text_macros(s))
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
