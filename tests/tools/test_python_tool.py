"""The Python tool's interpreter: state within a reply, errors and limits returned as text to the model."""

import pytest

from r1kit.tools.python import PythonSession, ToolCall, ToolConfig, code_of, render_output


def test_variables_persist_within_a_session_and_not_across():
    with PythonSession() as s:
        assert s.run("x = 48 * 1234").output == ""
        assert s.run("x").output == "59232\n"  # a final bare expression is echoed, as a REPL does
        assert s.run("print(x + 1)\nfor i in range(2): print(i)").output == "59233\n0\n1\n"
        assert s.run("y = None\ny").output == ""  # None is not echoed
    with PythonSession() as fresh:
        call = fresh.run("x")
        assert call.error == "NameError: name 'x' is not defined" and call.output == call.error


def test_an_error_returns_its_last_traceback_line_after_what_was_printed():
    with PythonSession() as s:
        call = s.run("print('before')\n1 / 0")
        assert (call.output, call.error) == ("before\nZeroDivisionError: division by zero",
                                             "ZeroDivisionError: division by zero")
        assert s.run("def f(:\n  pass").error.startswith("SyntaxError")
        assert s.run("import sys; sys.exit(3)").error.startswith("SystemExit")
        assert s.run("1 + 1").output == "2\n"  # the session survives all of it


def test_a_timeout_kills_the_interpreter_and_the_next_call_is_told():
    with PythonSession(ToolConfig(timeout=1.0)) as s:
        s.run("x = 1")
        call = s.run("while True: pass")
        assert call.error == "timeout" and call.output.startswith("TimeoutError")
        assert 0.9 < call.seconds < 5.0
        after = s.run("print(2)")
        assert after.output == "(the interpreter was restarted: earlier variables are lost)\n2\n"
        assert s.run("x").error == "NameError: name 'x' is not defined"


def test_call_count_time_budget_and_output_cap():
    with PythonSession(ToolConfig(max_calls=2, max_output_chars=10)) as s:
        assert s.run("print('a' * 25)").output == "a" * 10 + "\n... [16 more characters]"
        s.run("1")
        third = s.run("2")
        assert third.error == "limit" and "limit of 2 tool calls" in third.output and third.seconds == 0.0
    with PythonSession(ToolConfig(timeout=1.0, max_seconds=1.5)) as s:
        s.run("import time; time.sleep(0.6)")
        s.run("import time; time.sleep(0.6)")
        spent = s.run("import time; time.sleep(0.6)")  # 0.3 s of budget left: cut there
        assert spent.error == "timeout"
        assert s.run("1").error == "limit"


def test_memory_limit_is_an_error_not_a_crash():
    with PythonSession(ToolConfig(memory_mb=256)) as s:
        call = s.run("x = bytearray(600 * 2**20)")
        assert call.error.startswith("MemoryError")
        assert s.run("2 * 3").output == "6\n"


@pytest.mark.parametrize("text, code", [
    ("Let me compute.\n<code>\n```python\nprint(6 * 7)\n```\n</code>", "print(6 * 7)"),
    ("<code>print(1)</code>\n", "print(1)"),
    ("<code>```py\na = 1\nb = 2\n```</code>", "a = 1\nb = 2"),
    ("a <code>first</code> then <code>second</code>", "second"),
    ("no cell here", None),
    ("</code> closes nothing", None),
    ("<code>open but not closed", None),
])
def test_code_of_reads_the_cell_the_text_ends_with(text, code):
    assert code_of(text) == code


def test_render_output_starts_on_a_new_line():
    call = ToolCall("x", "42\n", 0.1)
    assert render_output(call, "...</code>") == "\n<interpreter>\n42\n</interpreter>\n"
    assert render_output(call, "...</code>\n") == "<interpreter>\n42\n</interpreter>\n"


def test_tool_output_spans_cover_what_the_engine_inserts():
    from r1kit.tools.python import tool_output_spans

    text = "a\n<code>\nprint(1)\n</code>\n<interpreter>\n1\n</interpreter>\nSo 1. <interpreter>x"
    spans = tool_output_spans(text)
    assert [text[a:b] for a, b in spans] == ["\n<interpreter>\n1\n</interpreter>\n", "<interpreter>x"]
