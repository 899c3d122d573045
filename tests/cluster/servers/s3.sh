#!/usr/bin/env bash
# S3 for the cluster suite: versitygw (an S3 gateway written in Go) serving a
# directory through its posix backend, on 127.0.0.1:17070 with fixed test
# credentials. Built from the Go module proxy with `go install`; the adapter
# creates its bucket in start().
#   bash tests/cluster/servers/s3.sh install|start|stop|env
set -euo pipefail

VERSION=v1.7.0
PORT=17070
ACCESS_KEY=mailyard-test
SECRET_KEY=mailyard-test-secret
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
GO_HOME=$CLUSTER_HOME/go
BIN=$GO_HOME/bin/versitygw
DIR=$CLUSTER_HOME/s3
PIDFILE=$DIR/versitygw.pid
LOG=$DIR/versitygw.log

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    # An unsigned request gets versitygw's 403; its Server header tells it
    # from anything else that might hold the port.
    python3 - "$PORT" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
    sys.exit(1)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.headers.get("Server") == "VERSITYGW" else 1)
except OSError:
    sys.exit(1)
EOF
}

install() {
    # Every suite run starts on an empty store, so runs do not pile up blobs.
    # Data does survive stop and start within a run (as Kafka's does): the
    # chaos run restarts this server and must find the spooled mail again.
    running || rm -rf "$DIR/data" "$DIR/meta"
    local go=go
    command -v go >/dev/null || go=/usr/local/go/bin/go
    # The binary records its module version (its --version says only "git").
    if [ -x "$BIN" ] && "$go" version -m "$BIN" | grep -q "versitygw[[:space:]]*$VERSION"; then
        return
    fi
    # Everything Go downloads or builds stays under the cluster home.
    GOPATH=$GO_HOME GOMODCACHE=$GO_HOME/pkg/mod GOCACHE=$GO_HOME/build-cache \
        GOBIN=$GO_HOME/bin GOFLAGS="-buildvcs=false -modcacherw" \
        "$go" install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
    # Only the binary is needed from now on; the build cache is most of a GiB.
    rm -rf "$GO_HOME/build-cache"
}

start() {
    if ! running; then
        [ -x "$BIN" ] || { echo "s3: versitygw is not installed; run '$0 install'" >&2; exit 1; }
        mkdir -p "$DIR/data" "$DIR/meta"
        # Object metadata goes to a sidecar directory rather than extended
        # attributes, which not every file system under the cache dir supports.
        nohup "$BIN" --port "127.0.0.1:$PORT" --access "$ACCESS_KEY" --secret "$SECRET_KEY" \
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
    echo "s3: versitygw not serving on 127.0.0.1:$PORT; log tail:" >&2
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
    echo "export MAILYARD_S3=http://127.0.0.1:$PORT"
    echo "export MAILYARD_S3_ACCESS_KEY=$ACCESS_KEY"
    echo "export MAILYARD_S3_SECRET_KEY=$SECRET_KEY"
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
