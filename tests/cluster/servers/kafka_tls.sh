#!/usr/bin/env bash
# A second Kafka for the cluster suite whose clients must speak TLS: one KRaft
# node (kafka.sh's jars; its `install` builds nothing) with an SSL listener on
# 127.0.0.1:19094 and its controller on 127.0.0.1:19095 (plaintext, used by
# the node alone). Key store and trust store are the PEM files of the
# cluster's test CA (tls/test_ca.bash); no Java keytool step.
#   bash tests/cluster/servers/kafka_tls.sh install|start|stop|env
set -euo pipefail
source "$(dirname "$0")/tls/test_ca.bash"

PORT=19094
CONTROLLER_PORT=19095
HEAP=384m
CLUSTER_ID=bWFpbHlhcmQtdGxzLWNsdXN0
CLUSTER_HOME=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}
LIBS=$CLUSTER_HOME/kafka/libs
DIR=$CLUSTER_HOME/kafka_tls
DATA=$DIR/data
LOGS=$DIR/logs
PIDFILE=$DIR/kafka.pid

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

serving() {
    grep -q "Kafka Server started" "$LOGS/server.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

install() {
    # The jars are kafka.sh's: tests/cluster/run installs every server (side
    # by side) before it starts any; two Maven runs into one repository at
    # once would trip over each other.
    running || rm -rf "$DATA"
    command -v openssl >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends openssl
}

write_config() {
    mkdir -p "$DATA" "$LOGS"
    # Kafka's PEM key store wants the PKCS#8 key and the certificate in one file.
    cat "$TLS_CA_DIR/server.key" "$TLS_CA_DIR/server.crt" > "$DIR/keystore.pem"
    chmod 600 "$DIR/keystore.pem"
    cat > "$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SSL://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SSL:SSL
ssl.keystore.type=PEM
ssl.keystore.location=$DIR/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_CA_DIR/ca.crt
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
log.dirs=$DATA
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
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
    java -Xmx128m -cp "$LIBS/*" -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        kafka.tools.StorageTool format --ignore-formatted --cluster-id "$CLUSTER_ID" \
        --config "$DIR/server.properties" > "$LOGS/format.log" 2>&1 || {
        echo "kafka_tls: formatting $DATA failed:" >&2; tail -20 "$LOGS/format.log" >&2; exit 1; }
}

start() {
    if running; then
        return
    fi
    ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 ||
        { echo "kafka_tls: Kafka is not installed; run 'kafka.sh install'" >&2; exit 1; }
    tls_test_ca
    write_config
    format_storage
    : > "$LOGS/server.log"
    nohup java -Xms128m -Xmx$HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
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
    echo "kafka_tls: did not start serving on 127.0.0.1:$PORT; log tail:" >&2
    tail -n 30 "$LOGS/server.log" "$LOGS/stdout.log" >&2
    stop
    exit 1
}

stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

env() {
    echo "export MAILYARD_KAFKA_TLS=127.0.0.1:$PORT"
    tls_test_ca_env
}

case "${1:-}" in
    install|start|stop|env) "$1" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
