#!/usr/bin/env bash
# Redis for the cluster suite: Debian's redis-server, run as our own instance
# on 127.0.0.1:16379 (never the Debian service), without persistence: the
# Cache port holds nothing that must survive a restart.
#   bash tests/cluster/servers/redis.sh install|start|stop|env
set -euo pipefail

PORT=16379
DIR=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}/redis
PIDFILE=$DIR/redis.pid
LOG=$DIR/redis.log

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = PONG ]
}

install() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends redis-server
}

start() {
    if ! running; then
        command -v redis-server >/dev/null || { echo "redis: not installed; run '$0 install'" >&2; exit 1; }
        mkdir -p "$DIR"
        rm -f "$PIDFILE"
        : > "$LOG"  # the tail shown on failure is this start's
        redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" \
            --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" \
            --save "" --appendonly no
    fi
    for i in $(seq 1 300); do
        if serving; then
            return
        fi
        # The daemon writes its pid file at once; none after 2 s means it died.
        if [ "$i" -gt 20 ] && ! running; then
            break
        fi
        sleep 0.1
    done
    echo "redis: not serving on 127.0.0.1:$PORT; log tail:" >&2
    tail -30 "$LOG" >&2
    stop
    exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

env() {
    echo "export MAILYARD_REDIS=redis://127.0.0.1:$PORT/0"
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
