"""`r1kit serve` as a user runs it: a subprocess on a free port, answered by the openai client, then stopped."""

import socket
import subprocess
import sys
import time

import httpx
import openai

from r1kit.serving.cli import served_name


def test_served_name_is_the_model_base_name():
    assert [served_name(m) for m in ("toy-moe", "/ckpt/run1/", "x/model.gguf")] == ["toy-moe", "run1", "model"]


def test_r1kit_serve_answers_an_openai_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "r1kit.cli", "serve", "--model", "toy-moe", "--port", str(port),
           "--max-seq-len", "128", "--max-concurrency", "2", "--api-key", "k", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        r = api.chat.completions.create(model="toy-moe", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.usage.completion_tokens <= 4 and r.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode in (0, -15)  # stopped within the wait (uvicorn re-raises SIGTERM after shutdown)


def test_bad_arguments_are_one_line_errors():
    r = subprocess.run([sys.executable, "-m", "r1kit.cli", "serve", "--model", "toy-moe", "--max-concurrency", "0"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--max-concurrency must be >= 1" in r.stderr
