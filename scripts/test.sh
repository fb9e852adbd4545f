#!/usr/bin/env bash
# One command on a fresh machine: install everything, then lint, type-check and run the
# whole suite (unit tests, and end-to-end tests with a real Redis, a real Celery worker
# and the real web server on loopback) on SQLite, then the PostgreSQL tests against a
# real PostgreSQL 16 + pgvector started here (scripts/postgres.sh) and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/pytest "$@"

pgdata=$(mktemp -d /tmp/imagesearch-pg.XXXXXX)
chmod 755 "$pgdata"
trap 'bash scripts/postgres.sh stop "$pgdata"; rm -rf "$pgdata"' EXIT
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL=$(bash scripts/postgres.sh start "$pgdata" "$port") .venv/bin/pytest -m postgres "$@"
