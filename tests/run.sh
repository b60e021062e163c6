#!/usr/bin/env bash
# The project's one test command (README, and .ci/run calls it): set up .venv from the project's
# own files, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The registry's CUDA build of torch is about 5 GB of wheels; a connection that drops partway through
# one of them (pip gives up after resuming the same file a few times) must not fail the whole run.
# pip keeps what it finished in its cache, so a later attempt fetches only what is missing.
pip_install() {
  local attempt
  for attempt in 1 2 3; do
    if .venv/bin/python -m pip install --quiet "$@"; then
      return 0
    fi
    echo "== pip install failed (attempt $attempt of 4); trying again in $((attempt * 30)) s" >&2
    sleep $((attempt * 30))
  done
  .venv/bin/python -m pip install --quiet "$@"
}
pip_install --upgrade pip
pip_install --resume-retries 20 -e '.[dev,studio,serve,export]'
# The browser tests (HTML report, web page) drive Debian's chromium: no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
