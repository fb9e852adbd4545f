#!/usr/bin/env bash
# Install what the project needs on a fresh machine: a virtual environment with the
# pinned packages and, with --dev, the system services the tests start (Redis,
# docker-compose for validating the compose file, Chromium for the browser tests, nginx
# for the reverse-proxy tests).
# Safe to run again: it skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "Python 3.11 or newer is required (found $("$python_bin" --version 2>&1))" >&2
  exit 1
fi

if [[ $dev == 1 ]]; then
  missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  # The browser tests drive Debian's Chromium with Playwright (never its own download).
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  # The front-server tests run deploy/nginx.conf in front of the live product.
  [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
  if ((${#missing[@]})); then
    sudo_cmd=()
    [[ $(id -u) == 0 ]] || sudo_cmd=(sudo -n)
    echo "installing ${missing[*]} from Debian packages"
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

[[ -x .venv/bin/python ]] || "$python_bin" -m venv .venv
reqs=requirements.txt
[[ $dev == 1 ]] && reqs=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt "$reqs" | sha256sum | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$reqs"
  touch "$stamp"
fi
