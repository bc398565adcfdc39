"""Grading code against tests: `run_tests` (one candidate) and `run_tests_batch` (a thread pool).

Two kinds of tests, and in both the verdict is decided here, in the trusted process:

* stdin/stdout cases ``[{"input": str, "output": str}, ...]``: the sandbox returns each run's whole stdout;
  the comparison (`outputs_match`) is token-wise over the *entire* output (a printed prefix fails), with an
  optional float tolerance. Expected outputs never enter the sandbox.
* assert-style test code (HumanEval/MBPP): the test code runs *here*, in a namespace whose names for the
  candidate's top-level functions are proxies; each call crosses into the sandbox, where the candidate
  function runs, and its return value comes back as plain data (`_sandbox_runner.decode`). The candidate
  cannot patch ``assert``, override ``__eq__``, exit early to fake success or read the test: none of them are
  in its process. Each top-level ``assert`` is one test; with ``check`` defined and an ``entry_point``,
  ``check(entry_point)`` is one test.

Left out: tests that pass callables into the candidate, or read back arguments the candidate mutated (only
plain data crosses the boundary); candidate code importing third-party packages (the sandbox has the
standard library only).
"""

from __future__ import annotations

import ast
import builtins
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from r1kit.errors import R1kitError
from r1kit.rewards._sandbox_runner import decode, encode
from r1kit.rewards.sandbox import Limits, SandboxDied, SandboxProcess, SandboxTimeout, process_limit

VERDICTS = ("accepted", "wrong_answer", "time_limit", "memory_limit", "runtime_error", "sandbox_error")
_STARTUP_S = 10.0  # grace for launching the sandbox and importing the candidate module


@dataclass
class TestReport:
    """Result of one candidate on one test suite. `runtime` is wall-clock seconds for the whole call."""

    passed: int
    total: int
    verdicts: list[str]
    runtime: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def _request(mode: str, code: str, limits: Limits, **extra) -> dict:
    # The CPU limit is a backstop one second past the wall-clock limit: a busy loop on an idle machine would
    # otherwise die of SIGXCPU (read as a crash) just before the parent's deadline reports time_limit.
    return {"mode": mode, "code": code, "timeout": limits.timeout, "cpu_s": limits.timeout + 1.0,
            "memory_mb": limits.memory_mb, "file_bytes": limits.file_bytes,
            "output_bytes": limits.output_bytes, "nproc": process_limit(limits), **extra}


# ---------------------------------------------------------------- stdin/stdout


def outputs_match(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Whole-output comparison, tolerant of whitespace (any run of spaces/newlines is one separator).

    With `float_tol`, tokens that both parse as floats match when |a-b| <= tol * max(1, |b|).
    """
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if float_tol is None:
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not (math.isfinite(fx) and abs(fx - fy) <= float_tol * max(1.0, abs(fy))):
            return False
    return True


_STDIO_STATUS = {"timeout": "time_limit", "memory": "memory_limit", "error": "runtime_error",
                 "output_limit": "runtime_error"}


def _run_stdio(code: str, cases: list[dict], limits: Limits, float_tol: float | None) -> list[str]:
    for c in cases:
        if not isinstance(c, dict) or not isinstance(c.get("input"), str) or not isinstance(c.get("output"), str):
            raise R1kitError("a stdin/stdout test must be {'input': str, 'output': str}")
    inputs = [c["input"] for c in cases]
    with SandboxProcess(_request("stdio", code, limits, inputs=inputs), limits) as box:
        deadline = time.monotonic() + _STARTUP_S + len(cases) * (limits.timeout + 0.5)
        try:
            runs = box.recv(deadline).get("runs")
        except SandboxTimeout:
            return ["time_limit"] * len(cases)
        except SandboxDied:
            return ["runtime_error"] * len(cases)
    if not isinstance(runs, list) or len(runs) != len(cases):
        return ["sandbox_error"] * len(cases)
    verdicts = []
    for run, case in zip(runs, cases):
        status = run.get("status") if isinstance(run, dict) else None
        if status == "ok":
            ok = outputs_match(str(run.get("stdout", "")), case["output"], float_tol)
            verdicts.append("accepted" if ok else "wrong_answer")
        else:
            verdicts.append(_STDIO_STATUS.get(status, "sandbox_error"))
    return verdicts


# ---------------------------------------------------------------- assert-style


class CandidateError(Exception):
    """Raised in the test namespace when the candidate raised a non-builtin exception."""


class _TestFailed(BaseException):  # BaseException: a test's `except Exception` must not swallow it
    def __init__(self, verdict: str):
        self.verdict = verdict


class _Session:
    """A sandbox holding the imported candidate module; restarted after a timeout or crash."""

    def __init__(self, code: str, limits: Limits):
        self.code, self.limits = code, limits
        self.box: SandboxProcess | None = None
        self.names: list[str] = []
        self.deadline = 0.0

    def start(self) -> None:
        self.box = SandboxProcess(_request("call", self.code, self.limits), self.limits)
        hello = self._recv(time.monotonic() + _STARTUP_S + self.limits.timeout)
        if not hello.get("ok"):
            raise _TestFailed("memory_limit" if hello.get("kind") == "memory" else "runtime_error")
        self.names = [n for n in hello.get("names", []) if isinstance(n, str)]

    def _recv(self, deadline: float) -> dict:
        try:
            return self.box.recv(deadline)
        except SandboxTimeout:
            self.stop()
            raise _TestFailed("time_limit") from None
        except SandboxDied:
            self.stop()
            raise _TestFailed("runtime_error") from None

    def call(self, fn: str, args: tuple, kwargs: dict):
        try:
            self.box.send({"fn": fn, "args": encode(args), "kwargs": encode(kwargs)})
        except SandboxDied:
            self.stop()
            raise _TestFailed("runtime_error") from None
        reply = self._recv(self.deadline)
        if reply.get("ok"):
            try:
                return decode(reply.get("value"))
            except (ValueError, TypeError, KeyError, AttributeError):
                raise _TestFailed("runtime_error") from None
        if reply.get("kind") == "memory":
            raise _TestFailed("memory_limit")
        exc = getattr(builtins, str(reply.get("exc")), None)
        if isinstance(exc, type) and issubclass(exc, Exception) and exc is not AssertionError:
            raise exc("raised by the candidate")
        raise CandidateError(str(reply.get("exc")))

    def stop(self) -> None:
        if self.box is not None:
            self.box.close()
            self.box = None


def _proxy(session: _Session, name: str):
    def call(*args, **kwargs):
        return session.call(name, args, kwargs)
    call.__name__ = name
    return call


def _split_tests(test_code: str, entry_point: str | None) -> tuple[list[tuple[bool, ast.Module]], set[str]]:
    """Top-level statements as (is_test, module), and the names to bind to candidate proxies.

    A `check` without top-level asserts becomes one test ``check(entry_point)``. Only names the test reads
    but neither defines, imports nor finds in builtins are proxied, so a candidate defining its own ``abs``
    or ``check`` cannot change what the test means.
    """
    try:
        tree = ast.parse(test_code)
    except SyntaxError as e:
        raise R1kitError(f"test code does not parse: {e}") from None
    parts = [(isinstance(s, ast.Assert), ast.Module(body=[s], type_ignores=[])) for s in tree.body]
    defines_check = any(isinstance(s, ast.FunctionDef) and s.name == "check" for s in tree.body)
    if defines_check and entry_point and not any(t for t, _ in parts):
        parts.append((True, ast.parse(f"check({entry_point})")))
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
    loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return parts, (loads - bound) | ({entry_point} if entry_point else set())


def _run_asserts(code: str, test_code: str, entry_point: str | None, limits: Limits) -> list[str]:
    parts, wanted = _split_tests(test_code, entry_point)
    n_tests = sum(t for t, _ in parts)
    if n_tests == 0:
        raise R1kitError("assert-style test code has no top-level assert and no check(entry_point)")
    session, verdicts, ns = _Session(code, limits), [], {"__name__": "__test__"}
    try:
        for is_test, mod in parts:
            verdict = "accepted"
            try:
                if session.box is None:
                    session.start()
                    ns.update({n: _proxy(session, n) for n in session.names if n in wanted})
                    if entry_point and entry_point not in session.names:
                        raise _TestFailed("runtime_error")
                session.deadline = time.monotonic() + limits.timeout
                exec(compile(mod, "<tests>", "exec"), ns)  # noqa: S102 (trusted test code; candidate is remote)
            except _TestFailed as e:
                verdict = e.verdict
            except AssertionError:
                verdict = "wrong_answer"
            except Exception:  # noqa: BLE001 (the test raised: the candidate failed it)
                verdict = "runtime_error"
            if is_test:
                verdicts.append(verdict)
            elif verdict != "accepted":  # setup failed: the remaining tests cannot run
                return verdicts + [verdict] * (n_tests - len(verdicts))
    finally:
        session.stop()
    return verdicts


# ---------------------------------------------------------------- public API


def run_tests(code: str, tests: list[dict] | str, *, entry_point: str | None = None, timeout: float = 5.0,
              memory_mb: int = 1024, float_tol: float | None = None) -> TestReport:
    """Runs untrusted `code` against `tests` in the sandbox; see the module docstring for the two kinds.

    `timeout` is wall-clock seconds per test (also the CPU limit); `memory_mb` the address-space limit.
    Raises R1kitError for malformed tests (never for anything the candidate does).
    """
    if not isinstance(code, str):
        raise R1kitError("code must be a string")
    limits = Limits(timeout=float(timeout), memory_mb=int(memory_mb))
    start = time.monotonic()
    if isinstance(tests, str):
        verdicts = _run_asserts(code, tests, entry_point, limits)
    elif isinstance(tests, list):
        verdicts = _run_stdio(code, tests, limits, float_tol) if tests else []
    else:
        raise R1kitError(f"tests must be a list of stdin/stdout cases or a string, got {type(tests).__name__}")
    passed = sum(v == "accepted" for v in verdicts)
    return TestReport(passed, len(verdicts), verdicts, time.monotonic() - start)


def run_tests_batch(items: list[dict], workers: int = 4) -> list[TestReport]:
    """Grades many candidates concurrently. Each item holds `run_tests` keyword arguments (code, tests, ...).

    Threads are enough: each one mostly waits on its sandbox process.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda item: run_tests(**item), items))
