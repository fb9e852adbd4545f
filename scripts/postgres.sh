#!/usr/bin/env bash
# A throwaway PostgreSQL 16 + pgvector for the tests, from the PyPI package pgserver
# (Debian has no pgvector package). PostgreSQL refuses to run as root, so the server runs
# as the unprivileged user `postgres` (created when missing), listening on loopback only.
#   scripts/postgres.sh start DIR PORT   initdb (once) and start; prints the DATABASE_URL
#   scripts/postgres.sh stop DIR         stop the server started in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start or stop}
dir=$(realpath -m "${2:?data directory}")
bin=$(.venv/bin/python -c 'import pgserver, pathlib; print(pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin")')

as_pg=()
if [[ $(id -u) == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  as_pg=(runuser -u postgres --)
fi

case $action in
  start)
    port=${3:?port}
    mkdir -p "$dir"
    [[ ${#as_pg[@]} == 0 ]] || chown postgres "$dir"
    if [[ ! -f $dir/PG_VERSION ]]; then
      "${as_pg[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    [[ -f $dir/postmaster.pid ]] && "${as_pg[@]}" "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
