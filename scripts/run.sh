#!/usr/bin/env bash
# One command on a fresh machine: install, then serve the gallery at http://127.0.0.1:8000
# with a Celery worker and an embedded Redis broker (SQLite and media under ./var).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python manage.py serve "$@"
