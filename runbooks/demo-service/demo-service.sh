#!/usr/bin/env bash
# A tiny stand-in for a real service, for the restart-service runbook.
#
#   demo-service.sh start STATE_DIR   start in the background (detached), return at once
#   demo-service.sh stop STATE_DIR    SIGTERM the running instance, wait until it is gone
#   demo-service.sh status STATE_DIR  print the pid and exit 0 if running, exit 3 if not
#   demo-service.sh run STATE_DIR     the service itself (what 'start' runs)
#
# While running it keeps STATE_DIR/demo.pid (its pid) and, after a short warm-up
# (DEMO_WARMUP seconds, default 1), STATE_DIR/health ("ok <pid> <unix time>"), refreshed
# every second. On SIGTERM it removes both and exits. Needs bash and coreutils, no root.
set -euo pipefail

cmd=${1:?usage: demo-service.sh start|stop|status|run STATE_DIR}
state=${2:?usage: demo-service.sh start|stop|status|run STATE_DIR}
pidfile=$state/demo.pid
health=$state/health

running_pid() {
    [[ -f $pidfile ]] || return 1
    local pid
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

case $cmd in
run)
    mkdir -p "$state"
    echo $$ >"$pidfile.tmp" && mv -f "$pidfile.tmp" "$pidfile"
    trap 'rm -f "$health" "$pidfile"; exit 0' TERM INT
    sleep "${DEMO_WARMUP:-1}" & wait $!
    while true; do
        echo "ok $$ $(date +%s)" >"$health.tmp" && mv -f "$health.tmp" "$health"
        sleep 1 & wait $!
    done
    ;;
start)
    if pid=$(running_pid); then
        echo "already running as pid $pid" >&2
        exit 1
    fi
    mkdir -p "$state"
    rm -f "$health"
    # Detach: own session, no terminal, output to a log, so the caller returns at once.
    setsid "$0" run "$state" </dev/null >>"$state/demo.log" 2>&1 &
    echo "started"
    ;;
stop)
    if ! pid=$(running_pid); then
        echo "not running"
        exit 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { echo "stopped pid $pid"; exit 0; }
        sleep 0.1
    done
    echo "pid $pid did not stop within 10 s" >&2
    exit 1
    ;;
status)
    if pid=$(running_pid); then
        echo "$pid"
        exit 0
    fi
    echo "not running"
    exit 3
    ;;
*)
    echo "unknown command $cmd (start, stop, status, run)" >&2
    exit 2
    ;;
esac
