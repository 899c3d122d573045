#!/usr/bin/env bash
# Elasticsearch for the cluster suite: one node, 7.17 (the last line whose
# server jars Maven Central serves with its modules), on 127.0.0.1:19201
# (HTTP) and :19301 (transport), beside OpenSearch on 19200. No x-pack: plain
# HTTP, no credentials. No distribution tarball is reachable, so install
# resolves the jars with Maven (pom.xml beside this script) and compiles a
# small launcher (ClasspathNode.java) that starts a Node with its modules as
# classpath plugins. See tests/cluster/README.md.
#   bash tests/cluster/servers/elasticsearch.sh install|start|stop|env
set -euo pipefail

HTTP_PORT=19201
TRANSPORT_PORT=19301
HEAP=1g
START_TIMEOUT=180  # seconds; a cold JVM on a busy 2-core machine takes ~20
SOURCES=$(cd "$(dirname "$0")/elasticsearch" && pwd)
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
DIR=$CLUSTER_HOME/elasticsearch       # the node's home: config/, data/, logs/
BUILD=$DIR/build                      # lib/ (jars), classes/ (the launcher)
STAMP=$BUILD/installed
PIDFILE=$DIR/node.pid
LOG=$DIR/logs/elasticsearch.log
CONSOLE=$DIR/logs/console.log

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    # Cluster health at least yellow: the node answers and can take an index.
    python3 - "$HTTP_PORT" <<'EOF'
import sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/_cluster/health?wait_for_status=yellow&timeout=1s"
try:
    urllib.request.urlopen(url, timeout=3).read()
except OSError:
    sys.exit(1)
EOF
}

inputs_digest() {
    cat "$SOURCES/pom.xml" "$SOURCES/ClasspathNode.java" | sha256sum | cut -d' ' -f1
}

install() {
    local digest
    digest=$(inputs_digest)
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ]; then
        return
    fi
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    cp "$SOURCES/pom.xml" "$BUILD/pom.xml"
    # A Maven repository of its own: installs of the cluster servers run side
    # by side, and a shared local repository is not safe for that.
    if ! mvn -B -f "$BUILD/pom.xml" -Dmaven.repo.local="$DIR/m2" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$BUILD/lib" > "$BUILD/maven.log" 2>&1; then
        tail -40 "$BUILD/maven.log" >&2
        exit 1
    fi
    javac -d "$BUILD/classes" -cp "$BUILD/lib/*" "$SOURCES/ClasspathNode.java"
    echo "$digest" > "$STAMP"
    echo "elasticsearch: $(ls "$BUILD/lib" | wc -l) jars in $BUILD/lib"
}

write_config() {
    mkdir -p "$DIR/config" "$DIR/data" "$DIR/logs" "$DIR/tmp" "$DIR/plugins" "$DIR/modules"
    cp "$SOURCES/log4j2.properties" "$DIR/config/log4j2.properties"
    cat > "$DIR/config/elasticsearch.yml" <<EOF
cluster.name: mailyard-test-es
node.name: mailyard-node
path.data: $DIR/data
path.logs: $DIR/logs
network.host: 127.0.0.1
http.port: $HTTP_PORT
transport.port: $TRANSPORT_PORT
http.type: netty4
transport.type: netty4
discovery.type: single-node
# A shared test machine's disk may be fuller than the production watermarks allow.
cluster.routing.allocation.disk.threshold_enabled: false
EOF
}

start() {
    if running; then
        return
    fi
    [ -f "$STAMP" ] || { echo "elasticsearch: not installed; run '$0 install'" >&2; exit 1; }
    if serving; then
        echo "elasticsearch: something else already serves 127.0.0.1:$HTTP_PORT" >&2
        exit 1
    fi
    write_config
    local started=$SECONDS
    # The JVM options the distribution's jvm.options would give, at a small heap.
    nohup java -Xms256m -Xmx$HEAP -XX:+UseG1GC -XX:-OmitStackTraceInFastThrow \
        -Djava.io.tmpdir="$DIR/tmp" -Djava.awt.headless=true -Dfile.encoding=UTF-8 \
        -Djava.locale.providers=SPI,COMPAT -Dio.netty.noUnsafe=true \
        -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
        -Dlog4j.configurationFile="$DIR/config/log4j2.properties" \
        -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
        -Dmailyard.elasticsearch.log="$LOG" \
        -cp "$BUILD/lib/*:$BUILD/classes" ClasspathNode "$DIR" > "$CONSOLE" 2>&1 &
    echo $! > "$PIDFILE"
    while (( SECONDS - started < START_TIMEOUT )); do
        if serving; then
            echo "elasticsearch: serving on 127.0.0.1:$HTTP_PORT after $(( SECONDS - started )) s"
            return
        fi
        running || break
        sleep 0.5
    done
    echo "elasticsearch: did not start serving on 127.0.0.1:$HTTP_PORT; log tails:" >&2
    tail -20 "$CONSOLE" >&2 || true
    tail -40 "$LOG" >&2 || true
    stop
    exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"  # the launcher's shutdown hook closes the node
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

env() {
    echo "export MAILYARD_ELASTICSEARCH=http://127.0.0.1:$HTTP_PORT"
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
