#!/usr/bin/env bash
# A second S3 for the cluster suite that speaks only HTTPS: versitygw (the
# binary s3.sh installs) on 127.0.0.1:17071 with its own empty directory and
# the cluster's test CA's server certificate (tls/test_ca.bash). The BlobStore
# contract runs on it as on the plaintext one, verifying that certificate.
#   bash tests/cluster/servers/s3_tls.sh install|start|stop|env
set -euo pipefail
source "$(dirname "$0")/tls/test_ca.bash"

PORT=17071
ACCESS_KEY=mailyard-test
SECRET_KEY=mailyard-test-secret
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
BIN=$CLUSTER_HOME/go/bin/versitygw
DIR=$CLUSTER_HOME/s3_tls
PIDFILE=$DIR/versitygw.pid
LOG=$DIR/versitygw.log

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    # An unsigned request over verified TLS gets versitygw's 403; its Server
    # header tells it from anything else that might hold the port.
    python3 - "$PORT" "$TLS_CA_DIR/ca.crt" <<'EOF'
import ssl, sys, urllib.request, urllib.error
context = ssl.create_default_context(cafile=sys.argv[2])
try:
    urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/", timeout=1, context=context)
    sys.exit(1)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.headers.get("Server") == "VERSITYGW" else 1)
except OSError:
    sys.exit(1)
EOF
}

install() {
    # The binary is s3.sh's: tests/cluster/run installs every server (side by
    # side) before it starts any, and two `go install`s into one GOPATH at
    # once would trip over each other.
    command -v openssl >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends openssl
}

start() {
    if ! running; then
        [ -x "$BIN" ] || { echo "s3_tls: versitygw is not installed; run 's3.sh install'" >&2; exit 1; }
        tls_test_ca
        # Test data only: each start begins empty.
        rm -rf "$DIR/data" "$DIR/meta"
        mkdir -p "$DIR/data" "$DIR/meta"
        nohup "$BIN" --port "127.0.0.1:$PORT" --access "$ACCESS_KEY" --secret "$SECRET_KEY" \
            --cert "$TLS_CA_DIR/server.crt" --key "$TLS_CA_DIR/server.key" \
            --quiet posix --sidecar "$DIR/meta" "$DIR/data" < /dev/null > "$LOG" 2>&1 &
        echo $! > "$PIDFILE"
    fi
    for _ in $(seq 1 300); do
        if ! running; then
            break
        fi
        if serving; then
            return
        fi
        sleep 0.1
    done
    echo "s3_tls: versitygw not serving HTTPS on 127.0.0.1:$PORT; log tail:" >&2
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
    echo "export MAILYARD_S3_TLS=https://127.0.0.1:$PORT"
    tls_test_ca_env
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
