#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft: broker and controller in one JVM) on 127.0.0.1,
# assembled from Maven Central jars (scripts/kafka/pom.xml) with no Docker and no tarball.
#
#   scripts/kafka.sh start    fetch jars (once, cached), format storage (once), start, wait until ready
#   scripts/kafka.sh stop     SIGTERM (controlled shutdown), SIGKILL after 30 s
#   scripts/kafka.sh status   exit 0 when the broker answers
#   scripts/kafka.sh wait     wait until the broker answers (up to KAFKA_WAIT seconds)
#   scripts/kafka.sh reset    stop and delete the broker's data (topics, offsets)
#
# Environment: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093), KAFKA_STATE (state dir: data, config,
# log, pid; /tmp/blindspot-kafka-$KAFKA_PORT), KAFKA_WATCH_PID (stop the broker when that process ends),
# BLINDSPOT_CACHE (jar cache; /var/cache/blindspot when
# writable, else ~/.cache/blindspot), KAFKA_HEAP (512m), KAFKA_WAIT (90).
# Idempotent: start on a running broker only waits; the second start skips Maven and formatting.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
POM=$HERE/kafka/pom.xml
PORT=${KAFKA_PORT:-19092}
CPORT=${KAFKA_CONTROLLER_PORT:-19093}
STATE=${KAFKA_STATE:-/tmp/blindspot-kafka-$PORT}
HEAP=${KAFKA_HEAP:-512m}
WAIT=${KAFKA_WAIT:-90}
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
if [[ -z ${BLINDSPOT_CACHE:-} ]]; then
  if mkdir -p /var/cache/blindspot 2>/dev/null && [[ -w /var/cache/blindspot ]]; then
    BLINDSPOT_CACHE=/var/cache/blindspot
  else
    BLINDSPOT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/blindspot
  fi
fi
LIBS=$BLINDSPOT_CACHE/kafka/$VERSION/libs
PIDFILE=$STATE/kafka.pid
WATCHFILE=$STATE/watch.pid  # the owner watcher's pid (and process group: it runs under setsid)
LOG=$STATE/kafka.log
log() { printf '\033[1m[kafka]\033[0m %s\n' "$*" >&2; }

fetch_jars() {
  # The stamp holds the pom's hash: a changed pom (new version, new jar) fetches again.
  local want; want=$(sha256sum "$POM" | cut -d' ' -f1)
  [[ -f $LIBS/.complete && $(cat "$LIBS/.complete") == "$want" ]] && return 0
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) not found: apt-get install maven" >&2; exit 1; }
  command -v java >/dev/null || { echo "kafka.sh: java not found: apt-get install openjdk-17-jre-headless" >&2; exit 1; }
  log "fetching Apache Kafka $VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS.tmp"; mkdir -p "$LIBS.tmp"
  mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp"
  rm -rf "$LIBS"; mv "$LIBS.tmp" "$LIBS"
  echo "$want" >"$LIBS/.complete"
}

pid_alive() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
# Ready = the JVM is ours and alive, the port accepts, and the server logged that startup completed.
ready() { pid_alive && port_open && grep -q 'Kafka Server started' "$LOG" 2>/dev/null; }

write_config() {
  mkdir -p "$STATE/data"
  cat >"$STATE/server.properties" <<EOF
# Written by scripts/kafka.sh: one node is both broker and KRaft controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE/data
num.partitions=3
auto.create.topics.enable=true
# Single node: internal topics can have one replica only. Few offsets partitions start faster.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumers often; waiting for more members to join only slows them down.
group.initial.rebalance.delay.ms=0
# Tests kill consumers on purpose: a short session (their own setting) lets the group drop a dead one sooner.
group.min.session.timeout.ms=1000
log.retention.hours=24
EOF
}

format_storage() {
  [[ -f $STATE/data/meta.properties ]] && return 0
  local id
  id=$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  log "formatting storage in $STATE/data (cluster id $id)"
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/kafka/log4j2.xml" \
    kafka.tools.StorageTool format -t "$id" -c "$STATE/server.properties" >"$STATE/format.log" 2>&1 \
    || { cat "$STATE/format.log" >&2; exit 1; }
}

wait_ready() {
  local deadline=$((SECONDS + WAIT))
  until ready; do
    if ! pid_alive; then echo "kafka.sh: broker exited; last log lines:" >&2; tail -n 30 "$LOG" >&2; exit 1; fi
    ((SECONDS < deadline)) || { echo "kafka.sh: broker not ready after ${WAIT}s (see $LOG)" >&2; exit 1; }
    sleep 0.3
  done
}

start() {
  if ready; then log "already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  if pid_alive; then wait_ready; return 0; fi
  if port_open; then echo "kafka.sh: 127.0.0.1:$PORT is taken by another process" >&2; exit 1; fi
  fetch_jars
  write_config
  format_storage
  : >"$LOG"
  # setsid: the broker outlives the shell (and pytest's process group) that started it.
  setsid java -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/kafka/log4j2.xml" -cp "$LIBS/*" \
    kafka.Kafka "$STATE/server.properties" >>"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  if [[ -n ${KAFKA_WATCH_PID:-} ]]; then
    # The owner (a test session, a bench) may die without stopping us: then the broker goes too.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
                    kill -TERM "$2" 2>/dev/null; for _ in $(seq 60); do kill -0 "$2" 2>/dev/null || exit 0; sleep 0.5; done
                    kill -KILL "$2" 2>/dev/null' _ "$KAFKA_WATCH_PID" "$pid" </dev/null >/dev/null 2>&1 &
    echo "$!" >"$WATCHFILE"
  fi
  wait_ready
  log "ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), state $STATE)"
}

stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; stop_watcher; log "not running"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "no exit after 30 s: SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$PIDFILE"
  stop_watcher
  log "stopped"
}

# The watcher would notice the broker gone within a second; ended now, with its `sleep`, so nothing
# of ours outlives a stop (test-fresh looks right after the run).
stop_watcher() {
  [[ -f $WATCHFILE ]] || return 0
  kill -TERM -- "-$(cat "$WATCHFILE")" 2>/dev/null || true
  rm -f "$WATCHFILE"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) if ready; then echo "running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
  wait) wait_ready ;;
  reset) stop; rm -rf "$STATE" ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 start|stop|status|wait|reset|fetch" >&2; exit 2 ;;
esac
