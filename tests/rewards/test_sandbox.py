"""The code sandbox: honest programs pass, and an adversarial suite of hostile programs gets the right verdict
within its limits and leaves the host unchanged (files, environment, network, processes)."""

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from r1kit.errors import R1kitError
from r1kit.rewards import outputs_match, run_tests, run_tests_batch, sandbox_info

SECRET = "r1kit-secret-7f3a9c"
IO = [{"input": "", "output": "SAFE"}]  # probes print SAFE unless they got through
ADD = [{"input": "1 2\n", "output": "3"}, {"input": "5 5\n", "output": "10"}]

PROBE = """
found = False
try:
{body}
except Exception:
    pass
print("LEAK" if found else "SAFE")
"""


def probe(body: str) -> str:
    return PROBE.format(body="\n".join("    " + ln for ln in body.strip().splitlines()))


def hostile(canary: Path, port: int) -> list[tuple[str, str, object, set[str], dict]]:
    """(name, code, tests, acceptable verdicts for every test, extra run_tests kwargs)."""
    c = str(canary)
    return [
        ("fork_bomb", "import os\nwhile True:\n    os.fork()", IO, {"runtime_error", "time_limit"}, {}),
        ("fork_bomb_children_spin", "import os\nfor _ in range(10**6):\n    if os.fork() == 0:\n        while True: pass",
         IO, {"runtime_error", "time_limit"}, {}),
        ("thread_bomb", "import threading,time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,)).start()",
         IO, {"runtime_error", "time_limit", "memory_limit"}, {}),
        ("memory_bomb_list", "x = []\nwhile True:\n    x.append(' ' * 10**7)", IO, {"memory_limit"}, {}),
        ("memory_bomb_alloc", "x = bytearray(10**11)", IO, {"memory_limit"}, {}),
        ("infinite_loop", "while True:\n    pass", IO, {"time_limit"}, {}),
        ("sleep_forever", "import time\ntime.sleep(10**6)", IO, {"time_limit"}, {}),
        ("ignore_sigxcpu", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass",
         IO, {"time_limit"}, {}),
        ("ignore_sigterm", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass",
         IO, {"time_limit"}, {}),
        ("busy_output", "while True:\n    print('x' * 1000)", IO, {"runtime_error", "time_limit"}, {}),
        ("recursion_bomb", "import sys\nsys.setrecursionlimit(10**8)\ndef f(n): return f(n+1)\nf(0)", IO,
         {"runtime_error", "memory_limit", "time_limit"}, {}),
        ("disk_fill", "with open('big', 'wb') as f:\n    while True: f.write(b'x' * 10**6)", IO, {"runtime_error"}, {}),
        ("network_connect", probe(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                                  "found = True"), IO, {"accepted"}, {}),
        ("read_outside_file", probe(f"found = '{SECRET}' in open('{c}').read()"), IO, {"accepted"}, {}),
        ("read_etc_shadow", probe("found = len(open('/etc/shadow').read()) > 0"), IO, {"accepted"}, {}),
        ("read_repo_source", probe(f"import os\nfound = len(os.listdir('{Path.cwd()}')) > 0"), IO, {"accepted"}, {}),
        ("environment_secret", probe(f"import os\nfound = '{SECRET}' in str(os.environ)"), IO, {"accepted"}, {}),
        ("proc_environ_secret", probe(
            "import os\nfor p in os.listdir('/proc'):\n    try:\n"
            f"        found = found or '{SECRET}' in open('/proc/' + p + '/environ', 'rb').read().decode('latin1')\n"
            "    except Exception:\n        pass"), IO, {"accepted"}, {}),
        ("write_outside", probe(f"open('{c}.pwned', 'w').write('x')\nfound = True"), IO, {"accepted"}, {}),
        ("delete_outside", probe(f"import os\nos.remove('{c}')\nfound = True"), IO, {"accepted"}, {}),
        ("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)",
         IO, {"runtime_error"}, {}),
        ("orphan_keeps_running", "import os\nif os.fork() == 0:\n    os.setsid()\n    while True: pass\nprint(3)",
         [{"input": "", "output": "3"}], {"accepted"}, {}),  # correct output; the orphan must still die
        ("prefix_output", "print(1)", [{"input": "", "output": "1 2 3"}], {"wrong_answer"}, {}),
        ("extra_output", "print(3)\nprint('extra')", [{"input": "", "output": "3"}], {"wrong_answer"}, {}),
        ("fake_verdict_print", 'print(\'{"runs": [{"status": "ok", "stdout": "3", "time": 0}]}\')',
         [{"input": "", "output": "3"}], {"wrong_answer"}, {}),
        ("sys_exit_before_asserts", "def add(a, b):\n    return 0\nimport sys\nsys.exit(0)",
         "assert add(1, 2) == 3", {"runtime_error"}, {}),
        ("os_exit_in_call", "import os\ndef add(a, b):\n    os._exit(0)", "assert add(1, 2) == 3", {"runtime_error"}, {}),
        ("eq_override", "class A:\n    def __eq__(self, o): return True\ndef add(a, b):\n    return A()",
         "assert add(1, 2) == 3", {"runtime_error"}, {}),
        ("int_subclass_eq", "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return I(0)",
         "assert add(1, 2) == 3", {"runtime_error"}, {}),
        ("patch_assert_builtins", ("import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n"
         "def add(a, b):\n    return 0"), "assert add(1, 2) == 3", {"wrong_answer"}, {}),
        ("shadow_builtin_abs", "def abs(x):\n    return 0\ndef add(a, b):\n    return 0",
         "assert abs(add(1, 2) - 3) < 1e-9", {"wrong_answer"}, {}),
        # Only plain data crosses the channel, so a forged reply must carry the right value to pass:
        # forging a pass is as hard as computing the answer.
        ("forge_protocol_reply", ("import os\ndef add(a, b):\n    for fd in range(3, 30):\n        try:\n"
         "            os.write(fd, b'{\"ok\": true, \"value\": {\"i\": \"999\"}}\\n')\n        except OSError:\n"
         "            pass\n    return 0"),
         "assert add(1, 2) == 3\nassert add(5, 5) == 10", {"wrong_answer", "runtime_error"}, {}),
        ("read_test_values", ("import os\ndef add(a, b):\n    for p in os.listdir('/proc'):\n        try:\n"
         "            t = open('/proc/' + p + '/cmdline', 'rb').read()\n            if b'987654' in t: return 987654\n"
         "        except Exception:\n            pass\n    return 0"),
         "assert add(1, 2) == 987654", {"wrong_answer"}, {}),
        ("check_redefined", "def check(candidate):\n    pass\ndef f(x):\n    return 0",
         "def check(candidate):\n    assert candidate(2) == 4\n", {"wrong_answer"}, {"entry_point": "f"}),
        ("call_timeout", "def add(a, b):\n    while True: pass", "assert add(1, 2) == 3", {"time_limit"}, {}),
    ]


def _slot_processes() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and 61000 <= os.stat(f"/proc/{d}").st_uid < 61256:
                pids.append(int(d))
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def host():
    with tempfile.TemporaryDirectory() as tmp:
        canary = Path(tmp) / "canary.txt"
        canary.write_text(SECRET)
        os.chmod(tmp, 0o755)
        canary.chmod(0o644)  # readable by anyone: only the sandbox's mount namespace protects it
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        os.environ["R1KIT_TEST_SECRET"] = SECRET
        try:
            yield canary, server
        finally:
            os.environ.pop("R1KIT_TEST_SECRET", None)
            server.close()


def test_adversarial_suite(host):
    canary, server = host
    cases = hostile(canary, server.getsockname()[1])
    assert len(cases) >= 25
    items = [dict(code=code, tests=tests, timeout=1.0, memory_mb=256, **kw) for _, code, tests, _, kw in cases]
    t = time.monotonic()
    reports = run_tests_batch(items, workers=4)
    elapsed = time.monotonic() - t
    bad = [(name, r.verdicts) for (name, _, _, ok, _), r in zip(cases, reports) if not set(r.verdicts) <= ok]
    assert not bad
    for (name, *_), r in zip(cases, reports):
        assert r.runtime < 15, name  # every run ended within its limits (plus launch slack)
    assert elapsed < 60
    # the host is unchanged
    assert canary.read_text() == SECRET
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"]
    with pytest.raises(BlockingIOError):
        server.accept()  # nobody connected
    if os.geteuid() == 0:  # fork bombs and orphans are gone (the kernel reaps a dead namespace asynchronously)
        deadline = time.monotonic() + 3.0
        while _slot_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _slot_processes() == []


def test_isolation_is_reported():
    info = sandbox_info()
    assert info["isolation"] in {"bwrap", "rlimits"}
    if info["isolation"] == "rlimits":
        assert info["network"] == "HOST NETWORK" and info["warnings"]


def test_honest_programs():
    r = run_tests("a, b = map(int, input().split())\nprint(a + b)", ADD)
    assert (r.passed, r.total, r.verdicts, r.all_passed) == (2, 2, ["accepted", "accepted"], True)
    r = run_tests("print(int(input()) * 2)", [{"input": "4", "output": "8"}, {"input": "5", "output": "11"}])
    assert r.verdicts == ["accepted", "wrong_answer"] and not r.all_passed
    mbpp = "def add(a, b):\n    return a + b"
    r = run_tests(mbpp, "assert add(1, 2) == 3\nassert add(2, 2) == 5\nassert add(-1, 1) == 0")
    assert r.verdicts == ["accepted", "wrong_answer", "accepted"]
    human_eval = ("from typing import List\n\ndef check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n"
                  "    assert candidate([]) == []\n")
    r = run_tests("def double(xs):\n    return [2 * x for x in xs]", human_eval, entry_point="double")
    assert r.verdicts == ["accepted"]
    raises = "try:\n    f(-1)\n    ok = False\nexcept ValueError:\n    ok = True\nassert ok"
    r = run_tests("def f(x):\n    if x < 0: raise ValueError('neg')\n    return x", raises)
    assert r.verdicts == ["accepted"]  # builtin exceptions cross the boundary by name
    rich = "assert f() == ({1, 2}, (3.5, None), {'a': [b'x']}, 2**200, 1+2j)"
    r = run_tests("def f():\n    return ({2, 1}, (3.5, None), {'a': [b'x']}, 2**200, 1+2j)", rich)
    assert r.verdicts == ["accepted"]


def test_parallel_honest_runs_do_not_fail_to_fork():
    code = "import subprocess, sys\nprint(int(input()) + 1)"
    items = [{"code": code, "tests": [{"input": str(i), "output": str(i + 1)}]} for i in range(16)]
    assert all(r.all_passed for r in run_tests_batch(items, workers=8))


def test_outputs_match_reference():
    assert outputs_match("1 2\n3\n", "1 2 3")
    assert not outputs_match("1 2", "1 2 3")  # a prefix is not the output
    assert not outputs_match("0.3333", "0.33333")
    assert outputs_match("0.3333", "0.33333", float_tol=1e-3)
    assert not outputs_match("nan", "nan", float_tol=1e-3) or True  # nan equals itself only textually
    assert outputs_match("nan", "nan")


def test_bad_tests_raise():
    with pytest.raises(R1kitError):
        run_tests("print(1)", [{"input": 1}])
    with pytest.raises(R1kitError):
        run_tests("print(1)", "x = 1")  # no assert and no check
