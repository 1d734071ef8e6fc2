#!/usr/bin/env bash
# Ray cluster bootstrap for rlrt runs: one Ray head, workers joining it, and the trainer run
# against the cluster once every node is up. Slurm-agnostic on purpose, so
# the same code runs under srun (rlrt_ray.sbatch) and on one machine over loopback (the tests).
#
#   ray_bootstrap.sh head                  start the head on this node
#   ray_bootstrap.sh worker                start a worker that joins RLRT_RAY_HEAD_IP:RLRT_RAY_PORT
#   ray_bootstrap.sh wait NODES            poll until NODES nodes are alive (or time out)
#   ray_bootstrap.sh node NODES CMD...     on every node: rank 0 runs the head and then CMD with
#                                          ray.address=<head>:<port>, the others join (below)
#   ray_bootstrap.sh ip                    print this node's address (as head/worker use it)
#   ray_bootstrap.sh stop                  `ray stop --force` on this node (whole-node jobs only)
#
# head/worker run `ray start --block` in the foreground by default (RLRT_RAY_BLOCK=1), so the
# process (an srun task) lives as long as the Ray node; RLRT_RAY_BLOCK=0 returns once started.
#
# Environment (defaults in brackets):
#   RLRT_RAY_HEAD_IP      the head's address (worker/wait) [this node's IP]
#   RLRT_RAY_NODE_IP      this node's address [RLRT_NET_IFNAME's IPv4 address if set, else the
#                         first of `hostname -I`, else 127.0.0.1]
#   RLRT_RAY_PORT         GCS port of the head [6379]
#   RLRT_RAY_PORT_BASE    first of this node's other Ray ports (node manager, object manager,
#                         agents, metrics, client server, dashboard: BASE..BASE+7; workers
#                         BASE+100..BASE+999); distinct per node only when several Ray nodes
#                         share a host [20000]
#   RLRT_RAY_NUM_CPUS     CPUs this node offers [Ray's detection]
#   RLRT_RAY_NUM_GPUS     GPUs this node offers [SLURM_GPUS_ON_NODE, else Ray's detection]
#   RLRT_RAY_TEMP_DIR     Ray's temp/session folder on this node [Ray's default, /tmp/ray]
#   RLRT_RAY_WAIT_S       seconds to wait for the head / the nodes [600]
#   RLRT_RAY_BLOCK        1: stay in the foreground with the Ray node [1]
#   RLRT_WORKDIR          directory to run in (relative config/data paths) [the current one]
#   RLRT_NODE_RANK        this node's rank for `node` [SLURM_NODEID, else 0]
#   RLRT_RAY_ADDRESS_FILE file on a shared file system where `node` rank 0 publishes the head
#   RLRT_PYTHON           python with ray installed (used by `wait`) [python3]
#   RAY_AUTH_MODE         Ray's token authentication [token if a token is given (RAY_AUTH_TOKEN,
#                         RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), else disabled]
#   RAY_AUTH_TOKEN_PATH   the token file; `node` rank 0 writes a fresh one (mode 0600) if it is
#                         missing, before the head starts (the NeMo-Run path sets it per job)

set -euo pipefail

RLRT_RAY_PORT="${RLRT_RAY_PORT:-6379}"
RLRT_RAY_PORT_BASE="${RLRT_RAY_PORT_BASE:-20000}"
RLRT_RAY_WAIT_S="${RLRT_RAY_WAIT_S:-600}"
RLRT_RAY_BLOCK="${RLRT_RAY_BLOCK:-1}"
RLRT_PYTHON="${RLRT_PYTHON:-python3}"

rlrt_log() {
    echo "[ray_bootstrap $(date -u +%H:%M:%S) $(hostname)] $*" >&2
}

rlrt_node_ip() {
    if [[ -n "${RLRT_RAY_NODE_IP:-}" ]]; then
        echo "$RLRT_RAY_NODE_IP"
        return
    fi
    if [[ -n "${RLRT_NET_IFNAME:-}" ]]; then
        # The address on the interface the collectives use (NCCL_SOCKET_IFNAME's).
        ip -o -4 addr show dev "$RLRT_NET_IFNAME" | awk '{ split($4, a, "/"); print a[1]; exit }'
        return
    fi
    local ips
    ips="$(hostname -I 2>/dev/null || true)"
    if [[ -n "${ips// /}" ]]; then
        echo "${ips%% *}"
    else
        echo 127.0.0.1
    fi
}

# The `ray start` flags shared by head and workers: this node's address, ports and resources.
rlrt_ray_node_args() {
    local base="$RLRT_RAY_PORT_BASE"
    RLRT_RAY_ARGS=(
        --node-ip-address="$(rlrt_node_ip)"
        --node-manager-port=$((base))
        --object-manager-port=$((base + 1))
        --dashboard-agent-grpc-port=$((base + 2))
        --dashboard-agent-listen-port=$((base + 3))
        --metrics-export-port=$((base + 4))
        --runtime-env-agent-port=$((base + 5))
        --min-worker-port=$((base + 100))
        --max-worker-port=$((base + 999))
        --disable-usage-stats
    )
    if [[ -n "${RLRT_RAY_NUM_CPUS:-}" ]]; then
        RLRT_RAY_ARGS+=(--num-cpus="$RLRT_RAY_NUM_CPUS")
    fi
    local gpus="${RLRT_RAY_NUM_GPUS:-${SLURM_GPUS_ON_NODE:-}}"
    if [[ -n "$gpus" ]]; then
        RLRT_RAY_ARGS+=(--num-gpus="$gpus")
    fi
    if [[ -n "${RLRT_RAY_TEMP_DIR:-}" ]]; then
        RLRT_RAY_ARGS+=(--temp-dir="$RLRT_RAY_TEMP_DIR")
    fi
    if [[ "$RLRT_RAY_BLOCK" == 1 ]]; then
        RLRT_RAY_ARGS+=(--block)
    fi
}

# Poll a TCP port with bash's /dev/tcp (no ray, nc or python needed) until it accepts; give up
# early if process $3 (the one that should open it) has died.
rlrt_wait_for_port() {
    local host="$1" port="$2" pid="${3:-}" deadline=$((SECONDS + RLRT_RAY_WAIT_S))
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            rlrt_log "the Ray head exited before listening on $host:$port (see the log above)"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            rlrt_log "gave up after ${RLRT_RAY_WAIT_S}s: nothing listens on $host:$port"
            return 1
        fi
        sleep 2
    done
}

# `ray start ARGS`; with --block it runs in the background of this shell, which forwards TERM,
# INT and HUP to it: `ray start --block` stops its Ray processes (raylet, GCS, agents, workers)
# on SIGTERM, whereas a signal to the whole process group reaches those first and can leave
# `ray start` hanging. So stop a node by signalling this script, not its process group.
rlrt_ray_start() {
    if [[ "$RLRT_RAY_BLOCK" != 1 ]]; then
        ray start "$@"
        return
    fi
    ray start "$@" &
    RLRT_RAY_PID=$!
    trap 'rlrt_log "stopping the Ray node"; kill -TERM "$RLRT_RAY_PID" 2>/dev/null || true' \
        TERM INT HUP
    local status=0
    # `wait` returns early when a trapped signal arrives: wait again until ray start is gone.
    while kill -0 "$RLRT_RAY_PID" 2>/dev/null; do
        status=0
        wait "$RLRT_RAY_PID" || status=$?
    done
    return "$status"
}

rlrt_ray_head() {
    rlrt_ray_node_args
    local address
    address="$(rlrt_node_ip):$RLRT_RAY_PORT"
    rlrt_log "starting the Ray head at $address"
    # The dashboard UI stays off (rlrt does not use it); its head process still listens, so it
    # and the client server get ports of this node's range, like everything else.
    rlrt_ray_start --head --port="$RLRT_RAY_PORT" --include-dashboard=false \
        --ray-client-server-port=$((RLRT_RAY_PORT_BASE + 6)) \
        --dashboard-port=$((RLRT_RAY_PORT_BASE + 7)) "${RLRT_RAY_ARGS[@]}"
}

rlrt_ray_worker() {
    local head="${RLRT_RAY_HEAD_IP:?RLRT_RAY_HEAD_IP must name the Ray head}"
    rlrt_wait_for_port "$head" "$RLRT_RAY_PORT"
    rlrt_ray_node_args
    rlrt_log "joining the Ray head at $head:$RLRT_RAY_PORT"
    rlrt_ray_start --address="$head:$RLRT_RAY_PORT" "${RLRT_RAY_ARGS[@]}"
}

# Alive nodes of the cluster at $1 (host:port), printed as a number.
rlrt_ray_alive_nodes() {
    "$RLRT_PYTHON" - "$1" <<'PY'
import sys

import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for node in ray.nodes() if node["Alive"]))
PY
}

rlrt_ray_wait() {
    local want="${1:?usage: ray_bootstrap.sh wait NODES}"
    local head="${RLRT_RAY_HEAD_IP:-$(rlrt_node_ip)}"
    local address="$head:$RLRT_RAY_PORT" deadline=$((SECONDS + RLRT_RAY_WAIT_S)) alive=0
    rlrt_wait_for_port "$head" "$RLRT_RAY_PORT"
    while true; do
        alive="$(rlrt_ray_alive_nodes "$address" 2>/dev/null | tail -n 1 || echo 0)"
        if [[ "$alive" =~ ^[0-9]+$ ]] && ((alive >= want)); then
            rlrt_log "Ray cluster at $address is ready: $alive of $want nodes alive"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            rlrt_log "gave up after ${RLRT_RAY_WAIT_S}s: ${alive:-0} of $want Ray nodes alive"
            return 1
        fi
        sleep 3
    done
}

# One Ray node per machine, all started the same way (one task per node, e.g. by srun): node
# rank 0 (RLRT_NODE_RANK, else SLURM_NODEID) starts the head, publishes its address in
# RLRT_RAY_ADDRESS_FILE (shared file system), waits for NODES nodes, runs CMD with the cluster's
# address, then stops the head and removes the file; the other ranks read the file, join, and
# stop their node once the file is gone (or the head stops answering). The Ray processes and the
# trainer get their own sessions (setsid) so a signal to the step's process group (srun
# forwarding SIGUSR1) reaches neither raylets nor reward workers; SIGUSR1/SIGTERM to this script
# on rank 0 are forwarded to the trainer alone, which checkpoints and exits.
rlrt_ray_node() {
    local want="${1:?usage: ray_bootstrap.sh node NODES CMD...}"
    shift
    local rank="${RLRT_NODE_RANK:-${SLURM_NODEID:-0}}"
    local file="${RLRT_RAY_ADDRESS_FILE:?RLRT_RAY_ADDRESS_FILE must name a file all nodes see}"
    local self="${BASH_SOURCE[0]}"
    if ((rank != 0)); then
        trap '' USR1
        local deadline=$((SECONDS + RLRT_RAY_WAIT_S))
        until [[ -s "$file" ]]; do
            if ((SECONDS >= deadline)); then
                rlrt_log "gave up after ${RLRT_RAY_WAIT_S}s: the head did not write $file"
                return 1
            fi
            sleep 2
        done
        RLRT_RAY_HEAD_IP="$(<"$file")"
        export RLRT_RAY_HEAD_IP
        RLRT_RAY_BLOCK=1 setsid bash "$self" worker &
        local ray_pid=$!
        while kill -0 "$ray_pid" 2>/dev/null; do
            if [[ ! -e "$file" ]] || ! (exec 3<>"/dev/tcp/$RLRT_RAY_HEAD_IP/$RLRT_RAY_PORT") \
                2>/dev/null; then
                rlrt_log "the head is done: stopping this Ray node"
                kill -TERM "$ray_pid" 2>/dev/null || true
                wait "$ray_pid" || true
                return 0
            fi
            sleep 5
        done
        wait "$ray_pid"
        return
    fi
    mkdir -p "$(dirname "$file")"
    rm -f "$file"
    rlrt_ray_make_token
    RLRT_RAY_BLOCK=1 setsid bash "$self" head &
    local head_pid=$! ip status=0 trainer_pid
    ip="$(rlrt_node_ip)"
    export RLRT_RAY_HEAD_IP="$ip"
    if rlrt_wait_for_port "$ip" "$RLRT_RAY_PORT" "$head_pid" && echo "$ip" >"$file.tmp" \
        && mv "$file.tmp" "$file" && rlrt_ray_wait "$want"; then
        export RAY_ADDRESS="$ip:$RLRT_RAY_PORT"
        rlrt_log "running: $* ray.address=$RAY_ADDRESS"
        setsid "$@" "ray.address=$RAY_ADDRESS" &
        trainer_pid=$!
        trap 'rlrt_log "pre-emption: SIGUSR1 to the trainer"; kill -USR1 "$trainer_pid" 2>/dev/null || true' \
            USR1 TERM
        while kill -0 "$trainer_pid" 2>/dev/null; do
            status=0
            wait "$trainer_pid" || status=$?
        done
        trap - USR1 TERM
        rlrt_log "the trainer exited with status $status"
    else
        status=1
    fi
    rm -f "$file"
    kill -TERM "$head_pid" 2>/dev/null || true
    while kill -0 "$head_pid" 2>/dev/null; do
        wait "$head_pid" || true
    done
    return "$status"
}

# Ray 2.60 turns token authentication on for a head that finds a token (RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) but leaves it off for a joining worker whose
# RAY_AUTH_MODE is unset, which the head then rejects. Decide once, the same way on every node.
# A RAY_AUTH_TOKEN_PATH that is set means token mode even before the file exists (`node` rank 0
# writes it), so no node of such a job ever runs with authentication off.
rlrt_ray_auth() {
    if [[ -n "${RAY_AUTH_MODE:-}" ]]; then
        return
    fi
    if [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -s "$HOME/.ray/auth_token" ]]; then
        export RAY_AUTH_MODE=token
    else
        export RAY_AUTH_MODE=disabled
    fi
}

# Token mode with a token file that does not exist yet: write a fresh random token, readable by
# this user only. Workers read it after the head's address file appears, i.e. after this.
rlrt_ray_make_token() {
    if [[ "${RAY_AUTH_MODE:-}" != token || -z "${RAY_AUTH_TOKEN_PATH:-}" || -n "${RAY_AUTH_TOKEN:-}" ]]; then
        return
    fi
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH")
        rlrt_log "wrote a Ray auth token for this job: $RAY_AUTH_TOKEN_PATH"
    fi
}

rlrt_ray_main() {
    local what="${1:-}"
    shift || true
    rlrt_ray_auth
    if [[ -n "${RLRT_WORKDIR:-}" ]]; then
        cd "$RLRT_WORKDIR" # relative config and data paths are relative to the repository
    fi
    case "$what" in
        head) rlrt_ray_head ;;
        worker) rlrt_ray_worker ;;
        wait) rlrt_ray_wait "$@" ;;
        node) rlrt_ray_node "$@" ;;
        ip) rlrt_node_ip ;;
        stop) ray stop --force ;;
        *)
            echo "usage: ray_bootstrap.sh head|worker|wait NODES|node NODES CMD...|ip|stop" >&2
            return 2
            ;;
    esac
}

# Sourced (by the sbatch script): define the functions only. Run: dispatch on the first argument.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    rlrt_ray_main "$@"
fi
