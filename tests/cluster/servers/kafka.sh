#!/usr/bin/env bash
# Kafka for the cluster suite: one KRaft node (broker and controller in one
# JVM) on 127.0.0.1:19092, its controller on 127.0.0.1:19093. The jars come
# from Maven Central (kafka_2.13 and a log4j2 backend, which Kafka 4's POM
# leaves out) through a generated POM; no distribution tarball, no ZooKeeper.
# Why Kafka 4.x: tests/cluster/README.md.
#   bash tests/cluster/servers/kafka.sh install|start|stop|env
# (install also empties the data directory unless the node runs.)
set -euo pipefail

VERSION=4.3.1
LOG4J_VERSION=2.24.3
SLF4J_VERSION=2.0.16
PORT=19092
CONTROLLER_PORT=19093
HEAP=512m
# A KRaft cluster id is 16 bytes in URL-safe base64; a fixed one saves a JVM
# start (StorageTool random-uuid) on every fresh node.
CLUSTER_ID=bWFpbHlhcmQtY2x1c3Rlcg
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
DIR=$CLUSTER_HOME/kafka
LIBS=$DIR/libs
DATA=$DIR/data
LOGS=$DIR/logs
PIDFILE=$DIR/kafka.pid
INSTALLED=$LIBS/.installed-$VERSION

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    # The broker logs this once its listeners accept requests and it has
    # registered with the controller; the port check catches a stale log.
    grep -q "Kafka Server started" "$LOGS/server.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

java_cp() {
    java -Xmx128m -cp "$LIBS/*" -Dlog4j2.configurationFile="$DIR/log4j2.properties" "$@"
}

install() {
    # Every suite run starts on an empty node: the tests make a topic or two
    # each, and a node that has collected thousands of partitions takes long
    # to restart. Data does survive stop and start within a run, which
    # test_kafka_faults.py relies on.
    running || rm -rf "$DATA"
    [ -f "$INSTALLED" ] && return
    mkdir -p "$DIR/build"
    cat > "$DIR/build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mailyard.cluster</groupId>
  <artifactId>kafka-node</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <!-- Kafka's POM asks for slf4j-api 1.7, which cannot load an SLF4J 2
         provider: the broker would log nothing -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>$SLF4J_VERSION</version>
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
    touch "$INSTALLED"
    ls "$LIBS" | wc -l | xargs echo "kafka: jars in $LIBS:"
}

write_config() {
    mkdir -p "$DATA" "$LOGS"
    cat > "$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
# mailyard creates its topics with the partition count it is configured with
auto.create.topics.enable=false
# one node: the internal topics cannot be replicated; 4 partitions for the
# group offsets instead of 50 make a fresh node ready sooner
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
# a group's first member gets its partitions at once, not after 3 s
group.initial.rebalance.delay.ms=0
# fsync every append, as the embedded queue does: one node has no replica
# to recover an acknowledged record from after a crash
log.flush.interval.messages=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
    cat > "$DIR/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=file
appender.file.fileName=$LOGS/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.state.name=state.change.logger
logger.state.level=WARN
EOF
}

format_storage() {
    [ -f "$DATA/meta.properties" ] && return
    java_cp kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id "$CLUSTER_ID" --config "$DIR/server.properties" > "$LOGS/format.log" 2>&1 || {
        echo "kafka: formatting $DATA failed:" >&2; tail -20 "$LOGS/format.log" >&2; exit 1; }
}

start() {
    if running; then
        return
    fi
    [ -f "$INSTALLED" ] || { echo "kafka: not installed; run '$0 install'" >&2; exit 1; }
    write_config
    format_storage
    : > "$LOGS/server.log"
    nohup java -Xms256m -Xmx$HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" > "$LOGS/stdout.log" 2>&1 &
    echo $! > "$PIDFILE"
    # Seconds on a quiet machine, half a minute on a busy one.
    local deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        if serving; then
            return
        fi
        if ! running; then
            break
        fi
        sleep 0.1
    done
    echo "kafka: did not start serving on 127.0.0.1:$PORT; log tail:" >&2
    tail -n 30 "$LOGS/server.log" "$LOGS/stdout.log" >&2
    stop
    exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    # A controlled shutdown takes a few seconds; a kill -9 would only cost
    # log recovery at the next start.
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

env() {
    echo "export MAILYARD_KAFKA=127.0.0.1:$PORT"
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
