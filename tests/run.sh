#!/usr/bin/env bash
# The project's one test command (README, and .ci/run calls it): set up .venv from the project's
# own files, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The registry's CUDA build of torch is about 5 GB of wheels. A connection that drops partway
# through one of them (pip resumes a file, but gives up when every resume stops at the same
# byte), or a disk filled by something else, must not fail the whole run: pip is tried again
# after a pause, with the free space on record in the log.
pip_install() {
  local attempt pause
  for attempt in 1 2 3 4; do
    if .venv/bin/python -m pip install --quiet "$@"; then
      return 0
    fi
    pause=$((attempt * attempt * 30))
    echo "== pip install failed (attempt $attempt of 5); free space: $(df -h . | awk 'NR == 2 {print $4}'); trying again in $pause s" >&2
    sleep "$pause"
  done
  .venv/bin/python -m pip install --quiet "$@"
}
pip_install --upgrade pip
pip_install --resume-retries 20 -e '.[dev,studio,serve,postgres,mlflow]'
# The browser tests (HTML report, web page) drive Debian's chromium: no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# The store's tests run on SQLite and on a real PostgreSQL that tests/postgres.py starts from
# Debian's package (its binaries, under /usr/lib/postgresql; no cluster of the package is used).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing Debian's postgresql for the store's tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
