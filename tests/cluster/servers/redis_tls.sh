#!/usr/bin/env bash
# A second Redis for the cluster suite that speaks only TLS, on
# 127.0.0.1:16380, and asks clients for a certificate (mutual TLS): the Cache
# contract runs on it as on the plaintext one (redis.sh). Certificates: the
# cluster's test CA (tls/test_ca.bash, made with openssl on first start).
#   bash tests/cluster/servers/redis_tls.sh install|start|stop|env
set -euo pipefail
source "$(dirname "$0")/tls/test_ca.bash"

PORT=16380
DIR=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}/redis_tls
PIDFILE=$DIR/redis.pid
LOG=$DIR/redis.log

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    [ "$(redis-cli -h 127.0.0.1 -p "$PORT" --tls --cacert "$TLS_CA_DIR/ca.crt" \
        --cert "$TLS_CA_DIR/client.crt" --key "$TLS_CA_DIR/client.key" ping 2>/dev/null)" = PONG ]
}

install() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
        && command -v openssl >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    # redis.sh may be installing at the same moment (tests/cluster/run installs
    # side by side): wait for apt's lock rather than fail on it.
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends redis-server openssl
}

start() {
    if ! running; then
        command -v redis-server >/dev/null || { echo "redis_tls: not installed; run '$0 install'" >&2; exit 1; }
        mkdir -p "$DIR"
        tls_test_ca
        rm -f "$PIDFILE"
        : > "$LOG"  # the tail shown on failure is this start's
        redis-server --bind 127.0.0.1 --port 0 --tls-port "$PORT" \
            --tls-cert-file "$TLS_CA_DIR/server.crt" --tls-key-file "$TLS_CA_DIR/server.key" \
            --tls-ca-cert-file "$TLS_CA_DIR/ca.crt" --tls-auth-clients yes \
            --dir "$DIR" --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" \
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
    echo "redis_tls: not serving TLS on 127.0.0.1:$PORT; log tail:" >&2
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
    echo "export MAILYARD_REDIS_TLS=rediss://127.0.0.1:$PORT/0"
    tls_test_ca_env
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
