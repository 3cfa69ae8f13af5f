#!/usr/bin/env bash
# A private, throw-away PostgreSQL server for the storage tests.
#
#   source .ci/postgres.sh          start one; export ITONAMI_TEST_POSTGRES_URL;
#                                   stop it when the sourcing shell exits
#                                   (or call itonami_pg_stop yourself)
#   bash .ci/postgres.sh run CMD..  start one, run CMD with the URL exported, stop it,
#                                   exit with CMD's status
#   bash .ci/postgres.sh start      start one and print `export ...` lines to eval
#   bash .ci/postgres.sh stop DIR   stop the server whose cluster lives in DIR
#
# PostgreSQL is installed with apt-get when initdb/pg_ctl are neither on PATH
# nor under /usr/lib/postgresql/*/bin. As root, the cluster is created and run
# by the `postgres` user (created if missing), since initdb refuses root.
# The server listens on 127.0.0.1 only, on a free port, with trust auth, and
# keeps its data in a temporary folder that is removed on stop.

itonami_pg_log() { echo "postgres.sh: $*" >&2; }

itonami_pg_find_bin() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        # resolve symlinks: psql and friends sit next to the real pg_ctl
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    # newest version first
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

itonami_pg_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        itonami_pg_log "PostgreSQL is missing and apt-get is not available"
        return 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            itonami_pg_log "PostgreSQL is missing and installing it needs root"
            return 1
        fi
    fi
    itonami_pg_log "installing PostgreSQL with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql postgresql-client >&2 || return 1
}

itonami_pg_free_port() {
    local port
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return 0
    fi
    for _ in $(seq 1 50); do
        port=$(( 20000 + RANDOM % 40000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# Run a command as the cluster's owner (postgres when we are root).
itonami_pg_as_owner() {
    if [ "$(id -u)" -ne 0 ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

itonami_pg_start() {
    local bin port dir db="${ITONAMI_PG_DATABASE:-itonami_test}"
    if ! bin=$(itonami_pg_find_bin); then
        itonami_pg_install || return 1
        bin=$(itonami_pg_find_bin) || { itonami_pg_log "no initdb/pg_ctl after install"; return 1; }
    fi
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin postgres \
            || { itonami_pg_log "cannot create the postgres user"; return 1; }
    fi
    dir=$(mktemp -d "${ITONAMI_PG_TMP:-/tmp}/itonami-pg.XXXXXX") || return 1
    mkdir -p "$dir/data" "$dir/sock"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R postgres: "$dir"
        chmod 755 "$dir"
    fi
    if ! itonami_pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1; then
        itonami_pg_log "initdb failed:"; cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    fi
    port=$(itonami_pg_free_port) || { itonami_pg_log "no free port"; rm -rf "$dir"; return 1; }
    if ! itonami_pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/sock" start >/dev/null; then
        itonami_pg_log "the server did not start:"; cat "$dir/server.log" >&2
        rm -rf "$dir"
        return 1
    fi
    ITONAMI_PG_DIR="$dir"
    ITONAMI_PG_BIN="$bin"
    export ITONAMI_PG_DIR ITONAMI_PG_BIN
    local psql="$bin/psql"
    [ -x "$psql" ] || psql=$(command -v psql) || { itonami_pg_log "no psql"; itonami_pg_stop; return 1; }
    if ! "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null; then
        itonami_pg_log "cannot create database $db"
        itonami_pg_stop
        return 1
    fi
    ITONAMI_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/$db"
    export ITONAMI_TEST_POSTGRES_URL
    itonami_pg_log "PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port (cluster $dir)"
}

# Stop the server started by itonami_pg_start (or the one in $1) and delete its files.
itonami_pg_stop() {
    local dir="${1:-${ITONAMI_PG_DIR:-}}" bin
    [ -n "$dir" ] && [ -d "$dir/data" ] || return 0
    bin="${ITONAMI_PG_BIN:-$(itonami_pg_find_bin)}"
    itonami_pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    if [ "$dir" = "${ITONAMI_PG_DIR:-}" ]; then
        unset ITONAMI_PG_DIR ITONAMI_TEST_POSTGRES_URL
    fi
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: start now and stop when the sourcing shell exits, keeping any EXIT trap it had.
    if itonami_pg_start; then
        _itonami_pg_prev_trap=$(trap -p EXIT)
        if [ -n "$_itonami_pg_prev_trap" ]; then
            eval "set -- ${_itonami_pg_prev_trap#trap -- }"
            trap "itonami_pg_stop; $1" EXIT
        else
            trap itonami_pg_stop EXIT
        fi
        unset _itonami_pg_prev_trap
    else
        return 1
    fi
else
    set -euo pipefail
    case "${1:-}" in
        run)
            shift
            [ "$#" -gt 0 ] || { itonami_pg_log "usage: $0 run CMD [ARGS...]"; exit 2; }
            itonami_pg_start
            trap itonami_pg_stop EXIT
            status=0
            "$@" || status=$?
            exit "$status"
            ;;
        start)
            itonami_pg_start
            printf 'export ITONAMI_TEST_POSTGRES_URL=%q ITONAMI_PG_DIR=%q ITONAMI_PG_BIN=%q\n' \
                "$ITONAMI_TEST_POSTGRES_URL" "$ITONAMI_PG_DIR" "$ITONAMI_PG_BIN"
            ;;
        stop)
            itonami_pg_stop "${2:-${ITONAMI_PG_DIR:-}}"
            ;;
        *)
            itonami_pg_log "usage: $0 run CMD... | start | stop DIR   (or: source $0)"
            exit 2
            ;;
    esac
fi
