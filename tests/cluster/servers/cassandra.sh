#!/usr/bin/env bash
# Cassandra for the cluster suite: one node on 127.0.0.1, CQL on 19042,
# storage (gossip) on 17000, JMX on 127.0.0.1:17199 only. The jars come from
# Maven Central (cassandra-all and its runtime dependencies) through a
# generated POM; no distribution tarball, no bin/cassandra shell wrapper: the
# JVM options its conf/jvm17-server.options would give are written below.
# Why these settings: tests/cluster/README.md.
#   bash tests/cluster/servers/cassandra.sh install|start|stop|env
set -euo pipefail

VERSION=5.0.9
NATIVE_PORT=19042
STORAGE_PORT=17000
JMX_PORT=17199
HEAP=1g
START_TIMEOUT=180   # seconds; a cold start on 2 busy cores takes about a minute
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
DIR=$CLUSTER_HOME/cassandra
LIBS=$DIR/lib
CONF=$DIR/conf
DATA=$DIR/data
LOGS=$DIR/logs
PIDFILE=$DIR/cassandra.pid
INSTALLED=$LIBS/.installed-$VERSION

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    # The CQL port opens last, after the schema and the system keyspaces are
    # loaded; a real query proves the node answers, not only that it listens.
    python3 - "$NATIVE_PORT" <<'EOF' 2>/dev/null
import sys
from cassandra.cluster import Cluster
cluster = Cluster(["127.0.0.1"], port=int(sys.argv[1]), connect_timeout=2,
                  control_connection_timeout=2)
try:
    cluster.connect().execute("SELECT release_version FROM system.local", timeout=5)
finally:
    cluster.shutdown()
EOF
}

install() {
    [ -f "$INSTALLED" ] && return
    mkdir -p "$DIR/build"
    cat > "$DIR/build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mailyard.cluster</groupId>
  <artifactId>cassandra-node</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$LIBS"
    # The Maven repository stays under the cluster home too, so removing it
    # really starts from scratch.
    mvn -B -q -Dstyle.color=never -f "$DIR/build/pom.xml" -Dmaven.repo.local="$DIR/m2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS"
    ls "$LIBS"/jamm-*.jar > /dev/null
    touch "$INSTALLED"
    ls "$LIBS" | wc -l | xargs echo "cassandra: jars in $LIBS:"
}

write_config() {
    mkdir -p "$CONF" "$DATA" "$LOGS"
    cat > "$CONF/cassandra.yaml" <<EOF
cluster_name: mailyard-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $STORAGE_PORT
native_transport_port: $NATIVE_PORT
endpoint_snitch: SimpleSnitch
data_file_directories:
  - $DATA/data
commitlog_directory: $DATA/commitlog
saved_caches_directory: $DATA/saved_caches
hints_directory: $DATA/hints
cdc_raw_directory: $DATA/cdc_raw
# A test node: periodic commit log sync like Cassandra's default.
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
# Small memtables and caches: the heap is 1 GiB on a machine others share.
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
memtable_flush_writers: 1
key_cache_size: 16MiB
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
# The adapter's change log uses lightweight transactions: Paxos v2 needs
# fewer round trips per conditional write than v1.
paxos_variant: v2
# The contract suite creates and drops nothing per test; a snapshot on a
# DROP or TRUNCATE only costs disk here.
auto_snapshot: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
start_native_transport: true
read_request_timeout: 10000ms
write_request_timeout: 5000ms
cas_contention_timeout: 5000ms
EOF
    cat > "$CONF/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$LOGS/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF
}

# What Cassandra 5.0's conf/jvm17-server.options gives a JDK 17 server: its
# code reaches into JDK internals (jamm's object sizes, direct buffers, the
# JMX and RMI plumbing), which JDK 17 refuses unless exported or opened.
JVM17_OPTIONS=(
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
    -XX:InitiatingHeapOccupancyPercent=70
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
)

# Test-node shortcuts: one node needs no gossip settling and no ring delay,
# and unsafesystem skips the fsync of system-table writes, which makes each
# CREATE TABLE of `mailyard schema apply` take a fraction of a second.
TEST_OPTIONS=(
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.unsafesystem=true
)

start() {
    if running; then
        return
    fi
    [ -f "$INSTALLED" ] || { echo "cassandra: not installed; run '$0 install'" >&2; exit 1; }
    write_config
    local jamm
    jamm=$(ls "$LIBS"/jamm-*.jar | head -1)
    : > "$LOGS/system.log"
    nohup java -Xms$HEAP -Xmx$HEAP -Xss256k -XX:+ExitOnOutOfMemoryError \
        "${JVM17_OPTIONS[@]}" "${TEST_OPTIONS[@]}" \
        -javaagent:"$jamm" \
        -Djava.awt.headless=true \
        -Dcassandra.config="file://$CONF/cassandra.yaml" \
        -Dlogback.configurationFile="file://$CONF/logback.xml" \
        -Dcassandra.logdir="$LOGS" -Dcassandra.storagedir="$DATA" \
        -Dcassandra.jmx.local.port=$JMX_PORT \
        -Dcassandra-foreground=yes \
        -cp "$CONF:$LIBS/*" org.apache.cassandra.service.CassandraDaemon \
        > "$LOGS/stdout.log" 2>&1 &
    echo $! > "$PIDFILE"
    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if serving; then
            return
        fi
        if ! running; then
            break
        fi
        sleep 1
    done
    echo "cassandra: did not start serving CQL on 127.0.0.1:$NATIVE_PORT; log tail:" >&2
    tail -n 40 "$LOGS/system.log" "$LOGS/stdout.log" >&2
    stop
    exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    # The shutdown hook drains and flushes; the commit log would replay after
    # a kill -9 anyway, so wait a while, not forever.
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

env() {
    echo "export MAILYARD_CASSANDRA=127.0.0.1:$NATIVE_PORT"
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
