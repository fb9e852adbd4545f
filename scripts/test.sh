#!/usr/bin/env bash
# One command on a fresh machine: install everything, then lint, type-check and run the
# whole suite (unit tests, and end-to-end tests with a real Redis, a real Celery worker
# and the real web server on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/pytest "$@"
