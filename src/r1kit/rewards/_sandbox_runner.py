"""The program that runs *inside* the sandbox. Standard library only; started as `python -I -S -c <this file>`.

It reads one JSON request line from stdin and either

* ``mode == "stdio"``: runs the candidate program once per input, each run in a fresh forked child with the
  input on stdin, and answers one JSON line ``{"runs": [{"status", "stdout", "time"}, ...]}``; or
* ``mode == "repl"``: a stateful interpreter (the model's Python tool): serves cells ``{"code"}`` one per line,
  each run in one persistent namespace with its printed output captured (capped at ``output_bytes``) and the
  value of a final bare expression echoed as a REPL does; answers ``{"ok", "output", "error"}`` per cell, where
  ``error`` is the exception's last traceback line; or
* ``mode == "call"``: executes the candidate module once, answers ``{"ok": true, "names": [...]}`` (its
  top-level callables), then serves call requests ``{"fn", "args", "kwargs"}`` one per line with
  ``{"ok": true, "value": ...}`` or ``{"ok": false, "exc": "ValueError", "kind": "error"}``.

Values cross the boundary only as plain data (`encode` / `decode` below, also used by the trusted parent), so a
candidate can never hand the grader an object with an overridden ``__eq__``. Nothing here decides a verdict:
expected outputs and test code never enter the sandbox. Resource limits are set in the process that runs
candidate code, before it runs, with soft == hard so the candidate cannot raise them.
"""

import json
import os
import resource
import select
import sys
import time

MEMORY_EXIT = 86  # exit code of a stdio child whose candidate raised MemoryError
_MAX_INT_DIGITS = 10_000
_MAX_DEPTH = 64


def encode(x, depth=0):
    """Plain data -> JSON-able tagged value. Exact types only (an ``int`` subclass is refused)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return {"i": str(x)}
    if t is float:
        return {"f": repr(x)}
    if t is complex:
        return {"c": [repr(x.real), repr(x.imag)]}
    if t is bytes:
        return {"b": x.hex()}
    if t in (list, tuple, set, frozenset):
        items = [encode(v, depth + 1) for v in x]
        if t in (set, frozenset):
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return {{list: "l", tuple: "t", set: "s", frozenset: "fs"}[t]: items}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    raise TypeError(f"cannot return a value of type {t.__name__} across the sandbox boundary")


def decode(v, depth=0):
    """Inverse of `encode`; rejects anything else (the parent runs this on untrusted bytes)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if v is None or type(v) in (bool, str):
        return v
    if type(v) is not dict or len(v) != 1:
        raise ValueError("malformed value")
    (tag, p), = v.items()
    if tag == "i":
        if type(p) is not str or len(p) > _MAX_INT_DIGITS:
            raise ValueError("malformed int")
        return int(p)
    if tag == "f":
        return float(p)
    if tag == "c":
        return complex(float(p[0]), float(p[1]))
    if tag == "b":
        return bytes.fromhex(p)
    if tag in ("l", "t", "s", "fs"):
        items = [decode(x, depth + 1) for x in p]
        return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
    if tag == "d":
        return {decode(k, depth + 1): decode(x, depth + 1) for k, x in p}
    raise ValueError(f"unknown tag {tag!r}")


def _set_limits(req):
    mem = int(req["memory_mb"]) << 20
    cpu = max(1, int(req["cpu_s"] + 0.999))
    for res, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, int(req["file_bytes"])),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, int(req["nproc"]))):
        resource.setrlimit(res, (val, val))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU first, SIGKILL a second later


def _run_candidate(code):
    """Executes candidate code as __main__ in this (forked) process, then exits with a status code."""
    sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115 (lives until _exit)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    try:
        # Running the candidate is this file's purpose: it is inside the sandbox, under limits.
        exec(compile(code, "<candidate>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
        sys.stdout.flush()
        status = 0
    except SystemExit as e:
        status = 0 if e.code in (None, 0) else 1
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001 (whatever the candidate raises)
            status = 1
    except MemoryError:
        status = MEMORY_EXIT
    except BaseException:  # noqa: BLE001 (whatever the candidate raises)
        status = 1
    os._exit(status)


def _stdio_one(req, stdin_text, index):
    path = f"input{index}.txt"
    with open(path, "w") as f:
        f.write(stdin_text)
    out_r, out_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: new process group, input on 0, output pipe on 1, nothing else open
        try:
            os.setpgid(0, 0)
            fd = os.open(path, os.O_RDONLY)
            os.dup2(fd, 0)
            os.dup2(out_w, 1)
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, 2)
            os.closerange(3, 1 << 16)
            _set_limits(req)
        except BaseException:  # noqa: BLE001 (whatever the candidate raises)
            os._exit(1)
        _run_candidate(req["code"])
    os.close(out_w)
    os.set_blocking(out_r, False)
    pidfd = os.pidfd_open(pid)
    deadline = start + float(req["timeout"])
    chunks, size, status, exited, eof = [], 0, None, False, False
    while not (exited and eof) and status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        ready, _, _ = select.select([pidfd] + ([] if eof else [out_r]), [], [], left)
        if pidfd in ready:
            exited = True
        while not eof:  # drain what is there now
            try:
                b = os.read(out_r, 1 << 16)
            except BlockingIOError:
                break
            if not b:
                eof = True
                break
            size += len(b)
            if size > int(req["output_bytes"]):
                status = "output_limit"
                break
            chunks.append(b)
        if exited:
            break
    try:
        os.killpg(pid, 9)  # also reaps whatever the candidate forked into its group
    except ProcessLookupError:
        pass
    _, wstatus, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - start
    os.close(out_r)
    os.close(pidfd)
    os.unlink(path)
    if status is None:
        if usage.ru_utime + usage.ru_stime >= float(req["cpu_s"]) - 0.05:
            status = "timeout"  # killed by RLIMIT_CPU (SIGXCPU, or SIGKILL at the hard limit)
        elif os.WIFSIGNALED(wstatus):
            status = "error"
        else:
            code = os.WEXITSTATUS(wstatus)
            status = {0: "ok", MEMORY_EXIT: "memory"}.get(code, "error")
    return {"status": status, "stdout": b"".join(chunks).decode("utf-8", "replace"), "time": elapsed}


def _serve_calls(req, inp, out):
    """Call mode: the candidate runs in this process; protocol fds were moved away from 0/1/2 first."""
    def send(obj):
        os.write(out, (json.dumps(obj) + "\n").encode())

    _set_limits(req)
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(req["code"], "<candidate>", "exec"), ns)  # noqa: S102
    except MemoryError:
        return send({"ok": False, "kind": "memory", "exc": "MemoryError"})
    except BaseException as e:  # noqa: BLE001
        return send({"ok": False, "kind": "error", "exc": type(e).__name__})
    names = sorted(k for k, v in ns.items() if callable(v) and not k.startswith("__"))
    send({"ok": True, "names": names})
    reader = os.fdopen(inp, "r")
    for line in reader:
        call = json.loads(line)
        try:
            value = ns[call["fn"]](*decode(call["args"]), **decode(call["kwargs"]))
            reply = {"ok": True, "value": encode(value)}
        except MemoryError:
            reply = {"ok": False, "kind": "memory", "exc": "MemoryError"}
        except BaseException as e:  # noqa: BLE001
            reply = {"ok": False, "kind": "error", "exc": type(e).__name__}
        send(reply)


class _CappedText:
    """A write-only text stream that keeps the first `cap` characters and counts the rest."""

    def __init__(self, cap):
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def write(self, text):
        text = str(text)
        keep = text[: max(0, self.cap - self.size)]
        self.parts.append(keep)
        self.size += len(keep)
        self.dropped += len(text) - len(keep)
        return len(text)

    def flush(self):
        pass

    def getvalue(self):
        tail = f"\n... [{self.dropped} more characters]" if self.dropped else ""
        return "".join(self.parts) + tail


def _error_line(e):
    """The last line of a traceback: `ZeroDivisionError: division by zero` (where in the cell is noise here)."""
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _run_cell(code, ns, cap):
    import ast

    out = _CappedText(cap)
    sys.stdout = sys.stderr = out
    error = None
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), ns)  # noqa: S102 (the tool's purpose, inside the sandbox)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
            if value is not None:
                out.write(repr(value) + "\n")
    except MemoryError:
        error = "MemoryError: the interpreter's memory limit was reached"
    except SystemExit:
        error = "SystemExit: exit() is not available in the interpreter"
    except BaseException as e:  # noqa: BLE001 (whatever the model's code raises goes back to the model)
        error = _error_line(e)
    finally:
        sys.stdout = sys.stderr = sys.__stdout__
    return {"ok": error is None, "output": out.getvalue(), "error": error}


def _serve_repl(req, inp, out):
    """Repl mode: one namespace for the whole session (a reply's tool calls share variables)."""
    _set_limits(req)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    # The parent waits for this before sending cells: stdin's buffer may have read past the request line.
    os.write(out, b'{"ready": true}\n')
    reader = os.fdopen(inp, "r")
    for line in reader:
        reply = _run_cell(json.loads(line)["code"], ns, int(req["output_bytes"]))
        os.write(out, (json.dumps(reply) + "\n").encode())


def main():
    sys.set_int_max_str_digits(0)
    req = json.loads(sys.stdin.buffer.readline())
    if req["mode"] == "stdio":
        runs = [_stdio_one(req, text, i) for i, text in enumerate(req["inputs"])]
        os.write(1, (json.dumps({"runs": runs}) + "\n").encode())
        return
    inp, out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    (_serve_repl if req["mode"] == "repl" else _serve_calls)(req, inp, out)


if __name__ == "__main__":
    main()
