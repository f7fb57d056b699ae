#!/usr/bin/env bash
# Start or stop a loopback Redis server for the Redis tests. Installs nothing.
#
#   bash .ci/redis-server.sh start PORT DIR   start redis-server on 127.0.0.1:PORT with its files in DIR
#                                             (created if missing), daemonized; returns once it answers PING
#   bash .ci/redis-server.sh stop [DIR]       stop the server started with that DIR (default: the last one
#                                             started); a no-op when none is running
#
# The server keeps nothing on disk (--save '' --appendonly no): the tests that need persistence
# (a restart with the append-only file) start their own instance on another port.
# Then point the tests at it: export ORCHESTRATOR_CORE_REDIS_URL=redis://127.0.0.1:PORT/0
set -euo pipefail

STATE="${TMPDIR:-/tmp}/oc-redis-server.last"

die() {
    echo "redis-server.sh: $*" >&2
    exit 1
}

ping_ok() {  # ping_ok PORT
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null || true)" = "PONG" ]
}

start() {
    local port="$1" dir="$2"
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    command -v redis-server >/dev/null 2>&1 || die "redis-server is not on PATH (apt-get install redis-server)"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli is not on PATH (apt-get install redis-tools)"
    if ping_ok "$port"; then
        die "something already answers PING on 127.0.0.1:$port"
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    rm -f "$dir/redis.pid"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    echo "$port" >"$dir/redis.port"
    echo "$dir" >"$STATE"
    for _ in $(seq 1 200); do  # up to 20 s
        if ping_ok "$port"; then
            echo "redis-server: 127.0.0.1:$port (pid $(cat "$dir/redis.pid" 2>/dev/null || echo '?'), dir $dir)"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$dir/redis.log" >&2 || true
    die "redis-server on 127.0.0.1:$port did not answer PING within 20 s"
}

stop() {
    local dir="${1:-}"
    if [ -z "$dir" ]; then
        [ -f "$STATE" ] || return 0
        dir="$(cat "$STATE")"
    fi
    [ -d "$dir" ] || return 0
    local pid="" port=""
    [ -f "$dir/redis.pid" ] && pid="$(cat "$dir/redis.pid")"
    [ -f "$dir/redis.port" ] && port="$(cat "$dir/redis.port")"
    if [ -n "$port" ] && ping_ok "$port"; then
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [ -n "$pid" ]; then
        for _ in $(seq 1 100); do  # up to 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/redis.pid" "$dir/redis.port"
    if [ -f "$STATE" ] && [ "$(cat "$STATE")" = "$dir" ]; then
        rm -f "$STATE"
    fi
}

case "${1:-}" in
start)
    [ $# -eq 3 ] || die "usage: $0 start PORT DIR"
    start "$2" "$3"
    ;;
stop)
    [ $# -le 2 ] || die "usage: $0 stop [DIR]"
    stop "${2:-}"
    ;;
*)
    die "usage: $0 start PORT DIR | stop [DIR]"
    ;;
esac
