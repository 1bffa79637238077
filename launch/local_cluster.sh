#!/usr/bin/env bash
# The docker-compose topology (docker/docker-compose.yml) as plain processes on this machine,
# for machines without a Docker engine: an S3 server, a Ray head and a second Ray node.
#
#   launch/local_cluster.sh up       start all three, wait until ready, write $DIR/cluster.env
#   launch/local_cluster.sh status   what runs (exit 1 when something is down)
#   launch/local_cluster.sh env      how to load the cluster's settings (prints no secret)
#   launch/local_cluster.sh down     stop what `up` started; exit 0 when nothing runs
#
# Then: source .cluster/cluster.env && launch/ray_submit.sh configs/study/demo.yaml \
#         run.output=s3://vlpdist/studies study.shards=s3://vlpdist/demo/shards
#
# Each Ray node gets its own loopback address: Ray rewrites 127.0.0.1 to the machine's
# routable address but keeps other 127.x addresses (Linux answers on all of 127/8). Every
# process is started in its own session (setsid), so `down` stops exactly the processes of
# this cluster - Ray's workers and job drivers included - and never another Ray on the machine
# (`ray stop` would stop them all).
#
# The defaults equal vlpdist/study/defaults.py (tests/test_cluster_files.py checks).
set -euo pipefail

S3_PORT=${S3_PORT:-9000}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RAY_HEAD_IP=${RAY_HEAD_IP:-127.0.0.2}
RAY_WORKER_IP=${RAY_WORKER_IP:-127.0.0.3}
BUCKET=${BUCKET:-vlpdist}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-vlpdist-local}
S3_SECRET_KEY=${S3_SECRET_KEY:-vlpdist-local-secret}
HEAD_CPUS=${HEAD_CPUS:-2}
WORKER_CPUS=${WORKER_CPUS:-2}
# Ray binds these on 127.0.0.1 as well as on the node's address: change them (and the
# addresses and ports above) to run a second cluster beside another Ray on this machine.
# The client port must lie outside Ray's worker ports, 10002-19999.
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-52365}
READY_TIMEOUT=${READY_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${VLPDIST_CLUSTER_DIR:-$REPO/.cluster}
if [[ -x $REPO/.venv/bin/python ]]; then
    # Ray jobs run with the PATH of the process that started the head.
    PATH="$REPO/.venv/bin:$PATH"
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi
export PATH
# Another cluster's RAY_ADDRESS would lead `ray start` astray; this script names its addresses.
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS
# Ray 2.60 may otherwise turn on token auth, and clients then fail with InvalidAuthToken.
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

log() { echo "local_cluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- process bookkeeping: $DIR/<name>.pid holds the id of a session leader -------------------

session_pids() { ps -e -o pid= -o sid= | awk -v s="$1" '$2 == s { print $1 }'; }

running() { # running NAME: the session NAME started still has a process
    local pidf="$DIR/$1.pid"
    [[ -f $pidf ]] && [[ -n $(session_pids "$(<"$pidf")") ]]
}

start() { # start NAME CMD...: CMD in a new session, logging to $DIR/logs/NAME.log
    local name=$1
    shift
    # In a script (no job control) the background child is no process-group leader, so setsid
    # makes it the leader of a new session in place: $! is the session id.
    setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
    echo "$!" >"$DIR/$name.pid"
}

stop() { # stop NAME: SIGTERM the leader, wait, then SIGKILL whatever is left of its session
    local name=$1 pidf="$DIR/$1.pid" sid pids leader
    [[ -f $pidf ]] || return 0
    sid=$(<"$pidf")
    pids=$(session_pids "$sid")
    leader=$(ps -o args= -p "$sid" || true)
    if [[ -n $leader && ! $leader =~ ray|moto_server ]]; then
        log "$name: session $sid is no longer ours (pid reused); leaving it alone"
        pids=
    fi
    if [[ -n $pids ]]; then
        # `ray start --block` stops its node's processes gracefully on SIGTERM; without a
        # leader left, its orphans get the SIGTERM themselves.
        # shellcheck disable=SC2086  # one pid per word
        kill -TERM "$sid" 2>/dev/null || kill -TERM $pids 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while [[ -n $(session_pids "$sid") ]] && ((SECONDS < deadline)); do sleep 0.2; done
        pids=$(session_pids "$sid")
        if [[ -n $pids ]]; then
            log "$name: killing what is left after ${STOP_TIMEOUT}s: $(echo "$pids" | xargs)"
            # shellcheck disable=SC2086  # one pid per word
            kill -KILL $pids 2>/dev/null || true
        fi
        log "$name stopped"
    fi
    rm -f "$pidf"
}

remove_state() { # what `up` wrote besides the logs of its processes, Ray's temp dir included
    if [[ -f $DIR/ray_temp_dir ]]; then
        local ray_tmp
        ray_tmp=$(<"$DIR/ray_temp_dir")
        if [[ $ray_tmp == */vlpdist-ray.* ]]; then rm -rf "$ray_tmp"; fi
    fi
    rm -f "$DIR"/*.pid "$DIR/ray_temp_dir" "$DIR/logs/ray" "$DIR/cluster.env" "$DIR/topology"
}

# --- readiness -------------------------------------------------------------------------------

port_open() { (: <>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # wait_for NAME WHAT CMD...: retry CMD until it succeeds, NAME dies or time is up
    local name=$1 what=$2 deadline=$((SECONDS + READY_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            tail -n 20 "$DIR/logs/$name.log" >&2 || true
            die "$name exited before $what (log: $DIR/logs/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$DIR/logs/$name.log" >&2 || true
            die "$name: no $what after ${READY_TIMEOUT}s (log: $DIR/logs/$name.log)"
        fi
        sleep 0.5
    done
}

ray_nodes() { # the number of alive nodes `ray status` lists
    { ray status --address "$RAY_HEAD_IP:$RAY_PORT" 2>/dev/null || true; } |
        awk '/^Active:/ { a = 1; next } /^[A-Z]/ { a = 0 } a && /node_/ { n++ } END { print n + 0 }'
}

has_two_nodes() { [[ $(ray_nodes) == 2 ]]; }

job_api_up() { "$PY" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$DASHBOARD_PORT/api/version"; }

check_ports_free() {
    local busy=() spec host port
    for spec in "S3_PORT 127.0.0.1 $S3_PORT" "RAY_PORT 127.0.0.1 $RAY_PORT" \
        "RAY_PORT $RAY_HEAD_IP $RAY_PORT" "DASHBOARD_PORT 127.0.0.1 $DASHBOARD_PORT" \
        "RAY_CLIENT_PORT 127.0.0.1 $RAY_CLIENT_PORT" "RAY_CLIENT_PORT $RAY_HEAD_IP $RAY_CLIENT_PORT" \
        "DASHBOARD_AGENT_PORT 127.0.0.1 $DASHBOARD_AGENT_PORT" \
        "DASHBOARD_AGENT_PORT $RAY_HEAD_IP $DASHBOARD_AGENT_PORT" \
        "DASHBOARD_AGENT_PORT $RAY_WORKER_IP $DASHBOARD_AGENT_PORT"; do
        read -r var host port <<<"$spec"
        if port_open "$host" "$port"; then busy+=("$var ($host:$port)"); fi
    done
    ((${#busy[@]} == 0)) || die "in use: ${busy[*]}; another cluster runs here? choose other" \
        "ports (and RAY_HEAD_IP/RAY_WORKER_IP) through the variables of the same names"
}

# --- commands --------------------------------------------------------------------------------

cmd_up() {
    command -v ray >/dev/null || die "no 'ray' on PATH (make venv, or pip install 'ray[default]')"
    command -v moto_server >/dev/null || die "no 'moto_server' on PATH (pip install 'moto[server]')"
    mkdir -p "$DIR/logs"
    DIR=$(cd "$DIR" && pwd)
    local name
    for name in ray-worker ray-head s3; do
        if running "$name"; then die "$name already runs (see: $0 status; stop: $0 down)"; fi
    done
    remove_state # of an earlier `up` that failed
    check_ports_free
    # On any failure below, stop what did start; the logs stay in $DIR/logs.
    trap 'log "up failed; stopping what started"; stop ray-worker; stop ray-head; stop s3' EXIT

    local t0=$SECONDS endpoint="http://127.0.0.1:$S3_PORT"
    export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
    export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=us-east-1
    start s3 moto_server -H 127.0.0.1 -p "$S3_PORT"
    wait_for s3 "S3 answer on $endpoint" port_open 127.0.0.1 "$S3_PORT"
    # endpoint and credentials come from the AWS_* variables exported above
    "$PY" - "$BUCKET" <<'EOF'
import sys

import boto3

s3 = boto3.client("s3")
try:
    s3.create_bucket(Bucket=sys.argv[1])
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
EOF
    log "S3 server on $endpoint, bucket $BUCKET ($((SECONDS - t0))s)"

    # One temp dir for both nodes (Ray keeps its sessions, sockets and logs there), short
    # because Ray's unix socket paths must stay under 108 bytes.
    local ray_tmp
    ray_tmp=$(mktemp -d "${TMPDIR:-/tmp}/vlpdist-ray.XXXXXX")
    echo "$ray_tmp" >"$DIR/ray_temp_dir"
    ln -sfn "$ray_tmp/session_latest/logs" "$DIR/logs/ray"
    # The nodes carry the cluster's S3 settings, as compose's nodes do, so jobs reach the bucket.
    start ray-head ray start --head --block --disable-usage-stats --temp-dir "$ray_tmp" \
        --node-ip-address "$RAY_HEAD_IP" --port "$RAY_PORT" --num-cpus "$HEAD_CPUS" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT" --ray-client-server-port "$RAY_CLIENT_PORT"
    # The port and http probes answer at once; `ray status` against a GCS that is not up
    # retries for many seconds.
    wait_for ray-head "Ray head on $RAY_HEAD_IP:$RAY_PORT" port_open "$RAY_HEAD_IP" "$RAY_PORT"
    wait_for ray-head "job API on http://127.0.0.1:$DASHBOARD_PORT" job_api_up
    log "Ray head on $RAY_HEAD_IP:$RAY_PORT, job API up ($((SECONDS - t0))s)"
    start ray-worker ray start --block --disable-usage-stats --temp-dir "$ray_tmp" \
        --address "$RAY_HEAD_IP:$RAY_PORT" --node-ip-address "$RAY_WORKER_IP" \
        --num-cpus "$WORKER_CPUS" --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT"
    wait_for ray-worker "second node in 'ray status'" has_two_nodes
    log "Ray worker on $RAY_WORKER_IP joined ($((SECONDS - t0))s)"

    # What `down` and `status` need, even when run with other variables than `up`.
    cat >"$DIR/topology" <<EOF
S3_PORT=$S3_PORT
RAY_PORT=$RAY_PORT
DASHBOARD_PORT=$DASHBOARD_PORT
RAY_HEAD_IP=$RAY_HEAD_IP
RAY_WORKER_IP=$RAY_WORKER_IP
BUCKET=$BUCKET
EOF
    (
        umask 077
        # RAY_ADDRESS is the GCS address, which ray.init() (`vlpdist study`), `ray status` and
        # the job CLI all accept; ray.init() rejects the job API's http address, so that one
        # goes in RAY_API_SERVER_ADDRESS, which Ray's job CLI prefers.
        cat >"$DIR/cluster.env" <<EOF
# written by launch/local_cluster.sh up: the local cluster's S3 and Ray settings
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_REGION=us-east-1
export RAY_ADDRESS=$RAY_HEAD_IP:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=disabled
EOF
    )
    chmod 600 "$DIR/cluster.env"
    trap - EXIT
    log "up in $((SECONDS - t0))s"
    cmd_env
}

load_topology() {
    # shellcheck source=/dev/null  # written by cmd_up: plain VAR=value lines
    if [[ -f $DIR/topology ]]; then source "$DIR/topology"; fi
}

cmd_status() {
    load_topology
    local ok=0 name pid
    for name in s3 ray-head ray-worker; do
        if running "$name"; then
            pid=$(<"$DIR/$name.pid")
            printf '%-11s running  (session %s, log %s)\n' "$name" "$pid" "$DIR/logs/$name.log"
        else
            printf '%-11s stopped\n' "$name"
            ok=1
        fi
    done
    if running s3; then
        if port_open 127.0.0.1 "$S3_PORT"; then
            echo "S3          http://127.0.0.1:$S3_PORT, bucket $BUCKET"
        else
            echo "S3          no answer on 127.0.0.1:$S3_PORT"
            ok=1
        fi
    fi
    if running ray-head && ! port_open "$RAY_HEAD_IP" "$RAY_PORT"; then
        echo "Ray         no GCS on $RAY_HEAD_IP:$RAY_PORT"
        ok=1
    elif running ray-head; then # (`ray status` retries a missing GCS for ~40s)
        local n
        n=$(ray_nodes)
        echo "Ray         $n node(s) alive; GCS $RAY_HEAD_IP:$RAY_PORT, jobs http://127.0.0.1:$DASHBOARD_PORT"
        [[ $n == 2 ]] || ok=1
    fi
    return "$ok"
}

cmd_env() {
    [[ -f $DIR/cluster.env ]] || die "not up (no $DIR/cluster.env); run: $0 up"
    echo "# sets AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION" \
        "RAY_ADDRESS RAY_API_SERVER_ADDRESS RAY_AUTH_MODE"
    printf 'source %q\n' "$DIR/cluster.env"
}

cmd_down() {
    [[ -d $DIR ]] || {
        log "nothing runs (no $DIR)"
        return 0
    }
    load_topology
    # The worker first: a raylet outliving its GCS retries for a while. With the GCS already
    # gone (the head died), a graceful drain can only time out: give it a few seconds.
    local timeout=$STOP_TIMEOUT
    if ! port_open "$RAY_HEAD_IP" "$RAY_PORT"; then STOP_TIMEOUT=5; fi
    stop ray-worker
    stop ray-head
    STOP_TIMEOUT=$timeout
    stop s3
    remove_state
    log "down (logs kept in $DIR/logs)"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
