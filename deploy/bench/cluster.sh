#!/usr/bin/env bash
# Cluster benchmark (issue 4): flotilla's managers and agents side by side with etcd 3.4 (Debian
# etcd-server) and Docker Swarm mode (dockerd 20.10, Debian docker.io), on one private lab of
# network-namespace hosts, in one run.
#
#   sudo deploy/bench/cluster.sh > cluster.md     # markdown report on stdout, progress on stderr
#
# What it does:
#   1. installs packages (deploy/setup.sh; docker.io when /usr/sbin/dockerd is missing), builds
#      flotilla's release binaries and the load generator (controller/benches/raft_load.rs), and
#      runs the scheduler benchmark (`cargo bench --bench scheduler`, one thread);
#   2. builds a lab: a hub namespace with a bridge, and hosts h1..h12 (one namespace each, veth to
#      the hub, address $NET.i/24 that exists only inside lab namespaces). Processes of a host run
#      under `unshare --uts` (the host's hostname) + `nsenter --net` (its network only);
#   3. raft writes: 3 flotilla managers (h1-h3, `flotilla-controller init|join`, election timeout
#      1 s, state on disk) and 3 etcd 3.4 members (h1-h3, default settings: fsync on, election
#      timeout 1 s) run side by side; the load generator on h4 writes through the leader (and
#      then a follower) with 1 client and with 64 clients over 8 connections, $ROUNDS rounds
#      alternating flotilla/etcd, $SECS s each after 1 s of warm-up. flotilla: Control.CreateConfig
#      (256-byte payload) over mutual TLS with the admin context; etcd: Put of 256 bytes, plain http;
#   4. leader failover, $FAILOVERS rounds per side, alternating: the load generator SIGKILLs the
#      leader and times the first write that succeeds through a survivor (a new attempt every
#      20 ms on each survivor); the killed member is restarted from its data before the next round;
#   5. node loss: 1 flotilla manager (h5) + 3 workers (h6-h8, `flotilla-agent serve --join`);
#      per round a service with 6 replicas, then SIGKILL one worker's agent and take its link
#      down; time until 6 tasks run on the others ($LOSS_ROUNDS rounds). The same with Docker
#      Swarm: manager h9 (drained) + workers h10-h12, a dockerd + containerd per host, kill -9
#      the worker's dockerd and cut its link ($SWARM_ROUNDS rounds; SWARM=0 skips it);
#   6. service create --replicas $SCALE_N: the flotilla cluster of step 5 (manager h5, workers h6-h8) vs a
#      single-node Docker Swarm (one dockerd on h13, `swarm init`), time from the create command until
#      `service ps` shows $SCALE_N running (polled every 50 ms + the CLI call), $SCALE_ROUNDS rounds
#      alternating sides, the service removed and every container gone between rounds;
#   7. manager memory with $MEM_TASKS tasks: $MEM_SVCS services whose replicas stay pending (a constraint
#      no node meets), on flotilla's manager h5 and then on the single-node Swarm: RSS/PSS of the
#      manager process (smaps_rollup) and its idle CPU before and after, the time until every task
#      exists and has a pending reason, and one more step-6 round with those tasks in the store;
#   8. prints the report; removes everything on exit, also on failure or interrupt.
# PHASES (default "sched raft failover loss scale mem") selects steps: sched = 1, raft = 3,
# failover = 4, loss = 5, scale = 6, mem = 7; e.g. PHASES="scale mem" for steps 6-7 only.
# Environment: ROUNDS (3), SECS (4), FAILOVERS (8), LOSS_ROUNDS (5), SWARM (1), SWARM_ROUNDS (3),
# SCALE_N (100), SCALE_ROUNDS (3), MEM_TASKS (10000), MEM_SVCS (10), IDLE_S (10: idle CPU window),
# PERF (0; 1: `perf record -g` of the manager during step 7's creation and its extra round, the data
# in BENCH_OUT), SCHED (1: run the scheduler bench), KEEP (0: after each write measurement remove what it wrote,
# so every measurement starts from the same store; 1: keep it, the store grows), LAB (namespace prefix, flbench), NET (lab /24 prefix,
# 10.251.7), MAX_LOAD (1.5) / WAIT_S (10): before each round wait up to WAIT_S for the 1-minute
# load to drop below MAX_LOAD; BENCH_OUT (directory to keep the raw JSON lines and logs).
# No traffic leaves the lab: every address is on a lab namespace's own link, with no routes.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/lib.sh
[ "$(id -u)" = 0 ] || { echo "cluster bench: run as root" >&2; exit 1; }
ROUNDS=${ROUNDS:-3} SECS=${SECS:-4} FAILOVERS=${FAILOVERS:-8} LOSS_ROUNDS=${LOSS_ROUNDS:-5}
SWARM=${SWARM:-1} SWARM_ROUNDS=${SWARM_ROUNDS:-3} SCHED=${SCHED:-1} KEEP=${KEEP:-0}
LAB=${LAB:-flbench} NET=${NET:-10.251.7}
MAX_LOAD=${MAX_LOAD:-1.5} WAIT_S=${WAIT_S:-10}
PHASES=${PHASES:-sched raft failover loss scale mem}
SCALE_N=${SCALE_N:-100} SCALE_ROUNDS=${SCALE_ROUNDS:-3}
MEM_TASKS=${MEM_TASKS:-10000} MEM_SVCS=${MEM_SVCS:-10} IDLE_S=${IDLE_S:-10} PERF=${PERF:-0}
DOCKER=/usr/bin/docker DOCKERD=/usr/sbin/dockerd CONTAINERD=/usr/bin/containerd
ETCD=/usr/bin/etcd
HOSTS=13
t_start=$EPOCHREALTIME

log() { printf '[cluster bench %s] %s\n' "$(date +%T)" "$*" >&2; }
load1() { cut -d' ' -f1 /proc/loadavg; }
loads=()
note_load() { loads+=("$1:$(load1)"); }
wait_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN{exit !(l > m)}'; do
    if ((waited >= WAIT_S)); then log "load $(load1) still above $MAX_LOAD: measuring anyway"; return; fi
    ((waited == 0)) && log "load average $(load1) > $MAX_LOAD: waiting (up to ${WAIT_S}s)"
    sleep 5; waited=$((waited + 5))
  done
}
has() { [[ " $PHASES " == *" $1 "* ]]; }   # has PHASE: whether PHASES selects it
has sched || SCHED=0
has raft || ROUNDS=0
has failover || FAILOVERS=0
has loss || { LOSS_ROUNDS=0 SWARM_ROUNDS=0; }
has scale || SCALE_ROUNDS=0

# --- Packages and binaries ------------------------------------------------------------------------
deploy/setup.sh
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  log "installing etcd-server and etcd-client (etcd 3.4, the raft peer)"
  # Debian starts a packaged etcd on install: forbid service starts while installing.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get update -qq
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null || rc=$?
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || exit "$rc"
fi
if [ ! -x "$DOCKERD" ] && [ "$SWARM" = 1 ]; then
  log "installing docker.io (dockerd 20.10, the Swarm peer)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
log "building release binaries and the load generator"
cargo build --release -p flotilla-controller -p flotilla-agent --bins -q   # flotilla, flotilla-controller, flotilla-agent
LOADGEN=""
if ((ROUNDS + FAILOVERS > 0)); then
  LOADGEN=$(cargo bench -p flotilla-controller --bench raft_load --no-run --message-format=json -q 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "raft_load") | .executable' | tail -1)
  [ -x "$LOADGEN" ] || { echo "cluster bench: the load generator did not build" >&2; exit 1; }
fi
src_rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- agent controller proto pki Cargo.toml Cargo.lock 2>/dev/null || src_rev="$src_rev + uncommitted changes"
bin=$CARGO_TARGET_DIR/release
FL=$bin/flotilla CTL=$bin/flotilla-controller AGENT=$bin/flotilla-agent

hub=${LAB}hub
ns() { echo "${LAB}h$1"; }
addr() { echo "$NET.$1"; }
if ip netns list | grep -qw "$hub"; then
  echo "cluster bench: namespace $hub exists (another run?); set LAB and NET" >&2; exit 1
fi

work=$(mktemp -d /var/tmp/flotilla-bench-cluster.XXXXXX)   # on disk: raft logs, etcd data
run="$work/run"                                            # tmpfs: sockets, runtime state
out=${BENCH_OUT:-$work/out}
mkdir -p "$run" "$out"
W="$work/write.jsonl" F="$work/failover.jsonl" NL="$work/nodeloss.jsonl"
SC="$work/scale.jsonl" MEM="$work/mem.jsonl"
touch "$W" "$F" "$NL" "$SC" "$MEM"
declare -A PIDS=()    # name -> pid of every long-running process this run started
made_ns=0

cleanup() {
  set +e
  local n p m i id d
  log "cleaning up"
  # swarm: leave (stops its tasks) while the daemons run
  for i in 13 12 11 10 9; do
    [ -S "$run/d$i/docker.sock" ] && timeout 20 "$DOCKER" -H "unix://$run/d$i/docker.sock" swarm leave --force >/dev/null 2>&1
  done
  # flotilla agents: containers through each agent
  for i in 6 7 8; do
    if [ -S "$run/a$i/agent.sock" ] && [ -n "${PIDS[agent$i]:-}" ] && kill -0 "${PIDS[agent$i]}" 2>/dev/null; then
      ids=$(timeout 20 "$FL" -H "unix://$run/a$i/agent.sock" ps -aq 2>/dev/null)
      [ -n "$ids" ] && timeout 60 "$FL" -H "unix://$run/a$i/agent.sock" rm -f $ids >/dev/null 2>&1
    fi
  done
  for n in "${!PIDS[@]}"; do kill "${PIDS[$n]}" 2>/dev/null; done
  sleep 1
  # everything still alive whose command line names the work dir (daemons, shims, containers' init)
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "$work/" && kill -9 "${p#/proc/}" 2>/dev/null
  done
  for n in "${!PIDS[@]}"; do kill -9 "${PIDS[$n]}" 2>/dev/null; done
  sleep 0.5
  # containers' cgroups (flotilla: <ctl>/flotilla/<id>; docker: <ctl>/$LAB-dN/<id>)
  for i in 6 7 8; do
    for d in "$work/a$i/containers"/*; do
      [ -e "$d" ] || continue
      id=$(basename "$d")
      for m in /sys/fs/cgroup/*/flotilla/"$id"; do
        [ -d "$m" ] || continue
        for p in $(cat "$m/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        find "$m" -depth -type d -exec rmdir {} \; 2>/dev/null
      done
    done
  done
  for m in /sys/fs/cgroup/*/"$LAB"-d*; do
    [ -d "$m" ] || continue
    # shellcheck disable=SC2038  # the pipe carries pids (the files' contents), not file names
    find "$m" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
    find "$m" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # mounts under the work dir (overlays, netns bind mounts, the tmpfs), deepest first
  for _ in 1 2 3; do
    for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
  done
  mountpoint -q "$run" && { umount "$run" 2>/dev/null || umount -l "$run"; }
  if [ "$made_ns" = 1 ]; then
    for i in $(seq "$HOSTS"); do ip netns del "$(ns "$i")" 2>/dev/null; done
    ip netns del "$hub" 2>/dev/null
  fi
  [ "${had_key_json:-1}" = 0 ] && rm -f /etc/docker/key.json && rmdir /etc/docker 2>/dev/null
  [ -z "${BENCH_OUT:-}" ] || cp -r "$work"/*.log "$out"/ 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
had_key_json=0; [ -e /etc/docker/key.json ] && had_key_json=1
mount -t tmpfs -o size=512m,mode=0755 "$LAB-run" "$run"

# --- The lab ------------------------------------------------------------------------------------------
log "building the lab: $HOSTS hosts on $NET.0/24"
made_ns=1
ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
ip -n "$hub" link set lo up
for i in $(seq "$HOSTS"); do
  ip netns add "$(ns "$i")"
  ip -n "$hub" link add "h$i" type veth peer name eth0 netns "$(ns "$i")"
  ip -n "$hub" link set "h$i" master br0 up
  ip -n "$(ns "$i")" addr add "$(addr "$i")/24" dev eth0
  ip -n "$(ns "$i")" link set eth0 up
  ip -n "$(ns "$i")" link set lo up
done
# on HOST CMD...: CMD in host HOST's network namespace, with the host's own hostname. exec all
# the way down (unshare, sh and nsenter all exec).
on() {
  local h=$1; shift
  unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$(ns "$h")" nsenter --net="/run/netns/$(ns "$h")" -- "$@"
}
# bg_on LOG HOST CMD...: the same in the background, output appended to LOG; the pid in BGPID.
# Disowned (bash still reaps it, but prints no "Killed" line when the benchmark kills it);
# `gone PID` waits until it has exited.
bg_on() {
  local log=$1 h=$2; shift 2
  unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$(ns "$h")" nsenter --net="/run/netns/$(ns "$h")" -- "$@" \
    >> "$log" 2>&1 &
  BGPID=$!
  disown "$BGPID"
}
gone() { local p; for p in "$@"; do for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done; done; }
link() { ip -n "$hub" link set "h$1" "$2"; }

# --- Scheduler benchmark (one thread, before the clusters start) --------------------------------------
sched_pps="" sched_cpu="" sched_line=""
if [ "$SCHED" = 1 ]; then
  wait_quiet; note_load sched
  log "scheduler bench: 1,000,000 tasks onto 10,000 nodes"
  cargo bench -p flotilla-controller --bench scheduler -q > "$work/sched.log" 2>&1 || log "WARNING: the scheduler bench failed"
  sched_line=$(grep -E "^schedule: .* placements/s" "$work/sched.log" | head -1)
  sched_pps=$(echo "$sched_line" | grep -oE '[0-9]+ placements/s' | head -1 | cut -d' ' -f1)
  sched_cpu=$(echo "$sched_line" | grep -oE '[0-9]+ placements per cpu-second' | head -1 | cut -d' ' -f1)
  log "scheduler: ${sched_line:-no figure (see the log)}"
fi

# --- Raft: 3 flotilla managers and 3 etcd members on h1-h3 ------------------------------------------
FL_EPS="$(addr 1):4242,$(addr 2):4242,$(addr 3):4242"
ET_EPS="http://$(addr 1):2379,http://$(addr 2):2379,http://$(addr 3):2379"
CLI_R="$work/cli-raft"
start_manager() { # HOST VERB [ARGS...]: a flotilla manager on HOST; its pid in PIDS[fl$HOST]
  local h=$1 verb=$2; shift 2
  bg_on "$work/fl$h.log" "$h" "$CTL" "$verb" --state-dir "$work/fl$h" --listen "$(addr "$h"):4242" --election-timeout 1s "$@"
  PIDS[fl$h]=$BGPID
}
start_etcd() { # HOST: an etcd member on HOST (new cluster, or a restart from its data dir)
  local h=$1
  bg_on "$work/etcd$h.log" "$h" "$ETCD" --name "m$h" --data-dir "$work/etcd$h" \
    --listen-client-urls "http://$(addr "$h"):2379" --advertise-client-urls "http://$(addr "$h"):2379" \
    --listen-peer-urls "http://$(addr "$h"):2380" --initial-advertise-peer-urls "http://$(addr "$h"):2380" \
    --initial-cluster "m1=http://$(addr 1):2380,m2=http://$(addr 2):2380,m3=http://$(addr 3):2380" \
    --initial-cluster-token "$LAB" --initial-cluster-state new
  PIDS[etcd$h]=$BGPID
}
# token MARKER LOG: the join token printed after MARKER
token_in() { grep -sF "$1" "$2" | head -1 | awk '{for(i=1;i<NF;i++) if($i=="--token"){print $(i+1); exit}}'; }
wait_tokens() { # LOG: waits until init printed both tokens
  local i
  for i in $(seq 300); do
    [ -n "$(token_in "flotilla-controller join --token" "$1" 2>/dev/null)" ] && [ -n "$(token_in "flotilla-agent serve --join" "$1")" ] && return 0
    sleep 0.1
  done
  echo "cluster bench: flotilla-controller init printed no tokens; its log:" >&2; tail -20 "$1" >&2; return 1
}
lg() { on 4 "$LOADGEN" "$@"; }   # the load generator, on the client host h4
# cpu_ms PID...: user + system CPU time of the processes, in ms (from /proc/PID/stat, 10 ms ticks)
cpu_ms() {
  local p t=0 u
  for p in "$@"; do
    u=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    t=$((t + ${u:-0}))
  done
  echo $((t * 1000 / $(getconf CLK_TCK)))
}

etcd_version=$("$ETCD" --version | sed -n 1p)   # sed, not head: head exits early, SIGPIPE + pipefail
if ((ROUNDS + FAILOVERS > 0)); then
  log "starting 3 flotilla managers and 3 etcd members"
  start_manager 1 init --config-dir "$CLI_R"
  wait_tokens "$work/fl1.log"
  mtoken=$(token_in "flotilla-controller join --token" "$work/fl1.log")
  start_manager 2 join --token "$mtoken" "$(addr 1):4242"
  start_manager 3 join --token "$mtoken" "$(addr 1):4242"
  for h in 1 2 3; do start_etcd "$h"; done
  lg healthy --kind flotilla --endpoints "$FL_EPS" --config-dir "$CLI_R" --tag up >/dev/null
  lg healthy --kind etcd --endpoints "$ET_EPS" --tag up >/dev/null
  log "both clusters accept writes on every member"
fi

for r in $(seq "$ROUNDS"); do
  wait_quiet
  for shape in "1 1" "64 8"; do
    set -- $shape
    for via in leader follower; do
      for kind in flotilla etcd update-node; do
        # update-node: flotilla's UpdateNode of one node (no store growth, no name check), 1 client
        # via the leader only (concurrent updates of one object conflict by design: compare-and-set)
        op=create-config k=$kind
        [ "$kind" = update-node ] && { [ "$via" = leader ] && [ "$1" = 1 ] || continue; op=update-node k=flotilla; }
        if [ "$k" = flotilla ]; then eps=$FL_EPS mp="${PIDS[fl1]} ${PIDS[fl2]} ${PIDS[fl3]}"
        else eps=$ET_EPS mp="${PIDS[etcd1]} ${PIDS[etcd2]} ${PIDS[etcd3]}"; fi
        note_load "w-$kind-$1-$via"
        c0=$(cpu_ms $mp)
        line=$(lg write --kind "$k" --op "$op" --endpoints "$eps" --config-dir "$CLI_R" --via "$via" --clients "$1" --conns "$2" \
          --secs "$SECS" --tag "r$r-$1-$via" --label "$r")
        c1=$(cpu_ms $mp)
        # CPU of the 3 members over warm-up + measurement, per write of the measurement (approximate:
        # the warm-up's writes are not counted, so this slightly overstates it; same for both sides)
        echo "$line" | jq -c --argjson cpu "$((c1 - c0))" --argjson s "$SECS" '. + {cpu_ms: $cpu, cpu_us_per_write: (if .writes > 0 then ($cpu * 1000 * $s / (($s + 1) * .writes)) else null end)}' |
          tee -a "$W" | jq -c '{kind,via,clients,wps,p50_ms,p99_ms,errors,cpu_us_per_write}' >&2
        # each measurement starts from the same store (KEEP=1: let it grow, see BENCHMARKS.md)
        [ "$KEEP" = 1 ] || [ "$op" = update-node ] || lg clear --kind "$k" --endpoints "$eps" --config-dir "$CLI_R" 2>&1 | sed 's/^/  /' >&2
      done
    done
  done
done

# --- Failover -------------------------------------------------------------------------------------------
((FAILOVERS == 0)) || log "leader failover: $FAILOVERS rounds per side"
for r in $(seq "$FAILOVERS"); do
  for kind in flotilla etcd; do
    if [ "$kind" = flotilla ]; then eps=$FL_EPS p="${PIDS[fl1]},${PIDS[fl2]},${PIDS[fl3]}"
    else eps=$ET_EPS p="${PIDS[etcd1]},${PIDS[etcd2]},${PIDS[etcd3]}"; fi
    note_load "f-$kind"
    line=$(lg failover --kind "$kind" --endpoints "$eps" --config-dir "$CLI_R" --pids "$p" --tag "f$r") || line=""
    echo "$line" | tee -a "$F" | jq -c '{kind,killed,ok,first_write_ms}' >&2
    k=$(echo "$line" | jq -r '.killed_index // empty')
    [ -n "$k" ] || { log "WARNING: failover round $r ($kind) gave no result"; continue; }
    h=$((k + 1))
    if [ "$kind" = flotilla ]; then
      gone "${PIDS[fl$h]}"
      start_manager "$h" serve
    else
      gone "${PIDS[etcd$h]}"
      start_etcd "$h"
    fi
    lg healthy --kind "$kind" --endpoints "$eps" --config-dir "$CLI_R" --tag "fh$r" >/dev/null ||
      log "WARNING: $kind did not recover after failover round $r"
    sleep 1
  done
done
for h in 1 2 3; do kill "${PIDS[fl$h]:-}" "${PIDS[etcd$h]:-}" 2>/dev/null || true; done
for h in 1 2 3; do gone "${PIDS[fl$h]:-}" "${PIDS[etcd$h]:-}"; unset "PIDS[fl$h]" "PIDS[etcd$h]"; done

# --- Docker helpers (the Swarm phases) -----------------------------------------------------------------
dk() { local h=$1; shift; "$DOCKER" -H "unix://$run/d$h/docker.sock" "$@"; }
start_dockerd() { # HOST: containerd + dockerd with private state, in the host's namespace
  local h=$1 c i
  c="$run/d$h/containerd"
  mkdir -p "$c" "$work/d$h"
  if [ ! -e "$work/d$h/containerd.toml" ]; then
    cat > "$work/d$h/containerd.toml" <<TOML
version = 2
root = "$work/d$h/containerd"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
  fi
  if [ -z "${PIDS[ctrd$h]:-}" ] || ! kill -0 "${PIDS[ctrd$h]}" 2>/dev/null; then
    bg_on "$work/containerd$h.log" "$h" "$CONTAINERD" --config "$work/d$h/containerd.toml"
    PIDS[ctrd$h]=$BGPID
    for i in $(seq 100); do [ -S "$c/containerd.sock" ] && break; sleep 0.05; done
  fi
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 bg_on "$work/dockerd$h.log" "$h" "$DOCKERD" --containerd "$c/containerd.sock" \
    --data-root "$work/d$h/data" --exec-root "$run/d$h/exec" -H "unix://$run/d$h/docker.sock" \
    --pidfile "$run/d$h/docker.pid" --cgroup-parent "/$LAB-d$h"
  PIDS[dockerd$h]=$BGPID
  for i in $(seq 200); do dk "$h" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "dockerd of h$h did not start: $(tail -3 "$work/dockerd$h.log" | tr '\n' ' ')" >&2
  return 1
}
running_sw() { running_sw_on 9 "$@"; }
running_sw_on() { # MANAGER_HOST SERVICE [EXCLUDED_NODE]
  local m=$1; shift
  dk "$m" service ps --filter desired-state=running --format '{{.Node}}|{{.CurrentState}}' "$1" 2>/dev/null |
    awk -F'|' -v x="${2:-}" '$1 != x && $2 ~ /^Running/ {n++} END {print n+0}'
}
swarm_setup() {
  local h
  for h in 9 10 11 12; do start_dockerd "$h" || return 1; done
  dk 9 swarm init --advertise-addr "$(addr 9)" >/dev/null || return 1
  local t; t=$(dk 9 swarm join-token -q worker) || return 1
  for h in 10 11 12; do
    dk "$h" swarm join --token "$t" "$(addr 9):2377" >/dev/null || return 1
    dk "$h" import -c 'CMD ["/bin/sh"]' -c "ENV $BUSYBOX_PATH_ENV" "$work/busybox.tar" busybox:latest >/dev/null || return 1
  done
  dk 9 node update --availability drain "$(ns 9)" >/dev/null || return 1
  for _ in $(seq 100); do
    [ "$(dk 9 node ls --format '{{.Status}}' | grep -c Ready)" = 4 ] && return 0; sleep 0.2
  done
  return 1
}

# --- Node loss: flotilla, 1 manager (h5) + 3 workers (h6-h8) -------------------------------------------
busybox_tar "$work/busybox.tar"
CLI_N="$work/cli-loss"
fl() { FLOTILLA_CONFIG="$CLI_N" NO_COLOR=1 FLOTILLA_CONTEXT='' on 5 "$FL" "$@"; }   # the CLI, on the manager's host
start_agent() { # HOST [join args]
  local h=$1; shift
  bg_on "$work/agent$h.log" "$h" "$AGENT" serve --state-dir "$work/a$h" --run-dir "$run/a$h" "$@"
  PIDS[agent$h]=$BGPID
  local i
  for i in $(seq 200); do [ -S "$run/a$h/agent.sock" ] && return 0; sleep 0.05; done
  echo "cluster bench: the agent of h$h did not start; its log:" >&2; tail -20 "$work/agent$h.log" >&2; return 1
}
node_state() { # HOSTNAME: lower-case status of the node with that hostname
  fl node ls --format '{{.Hostname}} {{.Status}}' 2>/dev/null | awk -v h="$1" '$1 == h {print tolower($2)}'
}
wait_node() { # HOSTNAME STATE SECONDS
  local i
  for i in $(seq $(($3 * 10))); do [ "$(node_state "$1")" = "$2" ] && return 0; sleep 0.1; done
  return 1
}
# running_fl SERVICE [EXCLUDED_HOSTNAME]: tasks desired and observed running, not on the excluded node
running_fl() {
  fl service ps --format '{{.Node}}|{{.DesiredState}}|{{.CurrentState}}' "$1" 2>/dev/null |
    awk -F'|' -v x="${2:-}" '$1 != x && tolower($2) == "running" && tolower($3) ~ /^running/ {n++} END {print n+0}'
}

if ((LOSS_ROUNDS + SCALE_ROUNDS > 0)) || has mem; then
  log "flotilla: 1 manager (h5) + 3 workers (h6-h8)"
  bg_on "$work/fl5.log" 5 "$CTL" init --state-dir "$work/fl5" --listen "$(addr 5):4242" --election-timeout 1s --config-dir "$CLI_N"
  PIDS[fl5]=$BGPID
  wait_tokens "$work/fl5.log"
  wtoken=$(token_in "flotilla-agent serve --join" "$work/fl5.log")
  for h in 6 7 8; do
    start_agent "$h" --join "$(addr 5):4242" --token "$wtoken"
    "$FL" -H "unix://$run/a$h/agent.sock" image import -c 'CMD ["/bin/sh"]' -c "ENV $BUSYBOX_PATH_ENV" \
      "$work/busybox.tar" busybox:latest >/dev/null
  done
  for h in 6 7 8; do wait_node "$(ns "$h")" ready 30 || { echo "cluster bench: node h$h not ready" >&2; fl node ls >&2; exit 1; }; done
fi
((LOSS_ROUNDS == 0)) || log "node loss (flotilla): $LOSS_ROUNDS rounds"
for r in $(seq "$LOSS_ROUNDS"); do
  wait_quiet
  svc=loss$r victim=$((6 + (r - 1) % 3))
  vname=$(ns "$victim")
  fl service create -d --name "$svc" --replicas 6 busybox:latest sleep 100000 >/dev/null
  for _ in $(seq 300); do [ "$(running_fl "$svc")" = 6 ] && break; sleep 0.1; done
  on_victim=$({ fl service ps --format '{{.Node}}|{{.CurrentState}}' "$svc" || true; } | awk -F'|' -v x="$vname" '$1 == x && tolower($2) ~ /^running/' | wc -l)
  note_load "nl-flotilla"
  t0=$EPOCHREALTIME
  kill -9 "${PIDS[agent$victim]}" || true; link "$victim" down
  t_down="" t_run=""
  for _ in $(seq 600); do   # at most ~60+ s
    now=$EPOCHREALTIME
    [ -z "$t_down" ] && [ "$(node_state "$vname")" = down ] && t_down=$(awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.2f", b-a}')
    if [ "$(running_fl "$svc" "$vname")" = 6 ]; then t_run=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}'); break; fi
    sleep 0.1
  done
  printf '{"kind":"flotilla","round":%d,"moved":%d,"down_s":%s,"running_s":%s}\n' "$r" "$on_victim" "${t_down:-null}" "${t_run:-null}" |
    tee -a "$NL" >&2
  # the worker comes back; its stale copies go; the service goes
  link "$victim" up
  gone "${PIDS[agent$victim]}"
  rm -f "$run/a$victim/agent.sock"
  start_agent "$victim"
  wait_node "$vname" ready 30 || log "WARNING: h$victim did not come back"
  fl service rm "$svc" >/dev/null || log "WARNING: flotilla service rm $svc failed"
  for _ in $(seq 300); do
    left=0
    for h in 6 7 8; do left=$((left + $({ "$FL" -H "unix://$run/a$h/agent.sock" ps -q 2>/dev/null || true; } | wc -l))); done
    [ "$left" = 0 ] && break; sleep 0.1
  done
done
# --- service create --replicas $SCALE_N: flotilla (h5 + workers h6-h8) vs a single-node Swarm (h13) --
# Both clusters are up during the whole phase; rounds alternate (odd rounds flotilla first).
el() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}'; }   # seconds since $1
swarm1_ok=0 swarm1_why="skipped (SWARM=0)"
swarm1_setup() { # a single-node Swarm on h13: one dockerd is manager and worker (`docker swarm init`)
  start_dockerd 13 || return 1
  dk 13 swarm init --advertise-addr "$(addr 13)" >/dev/null || return 1
  dk 13 import -c 'CMD ["/bin/sh"]' -c "ENV $BUSYBOX_PATH_ENV" "$work/busybox.tar" busybox:latest >/dev/null
}
if [ "$SWARM" = 1 ] && { ((SCALE_ROUNDS > 0)) || has mem; }; then
  log "single-node Docker Swarm on h13"
  if swarm1_setup 2> "$work/swarm1-setup.err"; then swarm1_ok=1 swarm1_why=""
  else swarm1_why="the single-node Swarm did not start: $(tail -3 "$work/swarm1-setup.err" | tr '\n' ' ')"; log "WARNING: $swarm1_why"; fi
fi
containers_left() { # KIND: containers still on the side's hosts
  local h n=0
  if [ "$1" = flotilla ]; then
    for h in 6 7 8; do n=$((n + $({ "$FL" -H "unix://$run/a$h/agent.sock" ps -q 2>/dev/null || true; } | wc -l))); done
  else n=$({ dk 13 ps -q 2>/dev/null || true; } | wc -l); fi
  echo "$n"
}
# scale_round KIND SERVICE TAG: `service create -d --replicas $SCALE_N` (busybox sleep), polled every
# 50 ms (plus the CLI call) until $SCALE_N tasks are desired and observed running; then the service
# is removed and every container is gone before it returns. One JSON line in $SC.
scale_round() {
  local kind=$1 svc=$2 tag=$3 t0 tc n=0 t_run="" polls=0 t_clean l mp c0 c1
  if [ "$kind" = flotilla ]; then mp=${PIDS[fl5]}; else mp=${PIDS[dockerd13]}; fi
  l=$(load1)
  c0=$(cpu_ms "$mp")
  t0=$EPOCHREALTIME
  if [ "$kind" = flotilla ]; then
    fl service create -d --name "$svc" --replicas "$SCALE_N" --stop-signal SIGKILL busybox:latest sleep 100000 >/dev/null
  else
    dk 13 service create -d --name "$svc" --replicas "$SCALE_N" --no-resolve-image --stop-signal SIGKILL \
      busybox:latest sleep 100000 >/dev/null
  fi
  tc=$(el "$t0")
  while :; do
    if [ "$kind" = flotilla ]; then n=$(running_fl "$svc"); else n=$(running_sw_on 13 "$svc"); fi
    polls=$((polls + 1))
    [ "$n" = "$SCALE_N" ] && { t_run=$(el "$t0"); break; }
    awk -v t="$(el "$t0")" 'BEGIN{exit !(t > 180)}' && break
    sleep 0.05
  done
  c1=$(cpu_ms "$mp")
  # mgr_cpu_ms: CPU of the manager process (flotilla-controller; Swarm: dockerd, which also runs the
  # tasks) from the create command to all running, the polls' API calls included
  printf '{"kind":"%s","tag":"%s","replicas":%d,"create_cmd_s":%s,"running_s":%s,"last_count":%d,"polls":%d,"mgr_cpu_ms":%d,"load":%s}\n' \
    "$kind" "$tag" "$SCALE_N" "$tc" "${t_run:-null}" "$n" "$polls" "$((c1 - c0))" "$l" | tee -a "$SC" >&2
  t0=$EPOCHREALTIME
  if [ "$kind" = flotilla ]; then fl service rm "$svc" >/dev/null || log "WARNING: flotilla service rm $svc failed"
  else dk 13 service rm "$svc" >/dev/null || log "WARNING: docker service rm $svc failed"; fi
  for _ in $(seq 1200); do [ "$(containers_left "$kind")" = 0 ] && break; sleep 0.1; done
  t_clean=$(el "$t0")
  [ "$(containers_left "$kind")" = 0 ] || log "WARNING: $kind: containers left after removing $svc"
  log "$kind: $svc removed, containers gone after ${t_clean} s"
  sleep 1
}
if ((SCALE_ROUNDS > 0)); then
  log "service create --replicas $SCALE_N: flotilla (1 manager + 3 workers) vs single-node Swarm, $SCALE_ROUNDS rounds"
  for r in $(seq "$SCALE_ROUNDS"); do
    if ((r % 2)); then order="flotilla swarm"; else order="swarm flotilla"; fi
    for kind in $order; do
      [ "$kind" = swarm ] && [ "$swarm1_ok" != 1 ] && continue
      wait_quiet; note_load "sc-$kind"
      scale_round "$kind" "scale$r" "r$r"
    done
  done
fi

# --- Controller memory with $MEM_TASKS tasks (flotilla leader h5 vs the single-node Swarm's dockerd) ---
# The tasks stay pending: $MEM_SVCS services of MEM_TASKS/MEM_SVCS replicas with a constraint no node
# meets (node.labels.flbench==none), so the store holds $MEM_TASKS task objects (each with the
# scheduler's pending reason) and no container runs. Per side: RSS/PSS (smaps_rollup) and CPU over
# IDLE_S s idle; create the services; time until every task exists and has a pending reason (polled
# every 0.5 s plus the CLI call); RSS/PSS and CPU over IDLE_S s idle again; then one scale_round
# (100 running tasks on top of the pending ones: the cost of writes with a big store); remove all.
mem_kib() { awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print r+0, p+0}' "/proc/$1/smaps_rollup"; }
mem_counts() { # KIND: "tasks tasks-with-a-pending-reason" of the pend services
  local names=() i
  for i in $(seq "$MEM_SVCS"); do names+=("pend$i"); done
  if [ "$1" = flotilla ]; then fl service ps --format '{{.Error}}' "${names[@]}" 2>/dev/null
  else dk 13 service ps --format '{{.Error}}' "${names[@]}" 2>/dev/null; fi | awk 'NF {e++} {n++} END {print n+0, e+0}'
}
perf_pid=""
perf_on() { # NAME PID: perf record -g of PID until perf_off (PERF=1 only), data in $out/perf-NAME.data
  [ "$PERF" = 1 ] || return 0
  perf record -q -g -o "$out/perf-$1.data" -p "$2" >/dev/null 2>&1 &
  perf_pid=$!; PIDS[perf]=$perf_pid
  sleep 0.2
}
perf_off() { [ -n "$perf_pid" ] || return 0; kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null || true; perf_pid=""; unset "PIDS[perf]"; }
mem_phase() { # KIND
  local kind=$1 pid per=$((MEM_TASKS / MEM_SVCS)) i m0 m1 m2 c0 c1 idle0 idle1 t0 tc t_exist="" t_reason="" cnt="0 0" ccreate t_rm l0 l1
  if [ "$kind" = flotilla ]; then pid=${PIDS[fl5]}; else pid=${PIDS[dockerd13]}; fi
  wait_quiet; note_load "mem-$kind"; l0=$(load1)
  m0=$(mem_kib "$pid"); c0=$(cpu_ms "$pid"); sleep "$IDLE_S"; c1=$(cpu_ms "$pid"); idle0=$((c1 - c0))
  log "$kind: idle RSS/PSS (KiB) $m0, CPU ${idle0} ms in ${IDLE_S} s; creating $MEM_SVCS services x $per pending replicas"
  perf_on "$kind-create" "$pid"
  c0=$(cpu_ms "$pid"); t0=$EPOCHREALTIME
  for i in $(seq "$MEM_SVCS"); do
    if [ "$kind" = flotilla ]; then
      fl service create -d --name "pend$i" --replicas "$per" --constraint node.labels.flbench==none busybox:latest sleep 100000 >/dev/null
    else
      dk 13 service create -d --name "pend$i" --replicas "$per" --constraint node.labels.flbench==none --no-resolve-image \
        --stop-signal SIGKILL busybox:latest sleep 100000 >/dev/null
    fi
  done
  tc=$(el "$t0")
  while :; do
    cnt=$(mem_counts "$kind")
    [ -z "$t_exist" ] && [ "${cnt% *}" -ge "$MEM_TASKS" ] && t_exist=$(el "$t0")
    [ "${cnt#* }" -ge "$MEM_TASKS" ] && { t_reason=$(el "$t0"); break; }
    awk -v t="$(el "$t0")" 'BEGIN{exit !(t > 600)}' && break
    sleep 0.5
  done
  c1=$(cpu_ms "$pid"); ccreate=$((c1 - c0))
  perf_off
  log "$kind: $cnt tasks/with a reason; all exist after ${t_exist:-never} s, all pending with a reason after ${t_reason:-never} s, CPU ${ccreate} ms"
  sleep 5
  m1=$(mem_kib "$pid"); l1=$(load1); c0=$(cpu_ms "$pid"); sleep "$IDLE_S"; c1=$(cpu_ms "$pid"); idle1=$((c1 - c0))
  log "$kind: with the tasks: RSS/PSS (KiB) $m1, CPU ${idle1} ms in ${IDLE_S} s idle"
  perf_on "$kind-scale-big" "$pid"
  scale_round "$kind" scalebig "with-$MEM_TASKS-pending"
  perf_off
  m2=$(mem_kib "$pid")
  t0=$EPOCHREALTIME
  for i in $(seq "$MEM_SVCS"); do
    if [ "$kind" = flotilla ]; then fl service rm "pend$i" >/dev/null; else dk 13 service rm "pend$i" >/dev/null; fi || log "WARNING: $kind: rm pend$i failed"
  done
  for _ in $(seq 600); do [ "$(mem_counts "$kind")" = "0 0" ] && break; sleep 0.5; done
  t_rm=$(el "$t0")
  printf '{"kind":"%s","tasks":%d,"services":%d,"rss0_kib":%d,"pss0_kib":%d,"idle0_cpu_ms":%d,"create_cmds_s":%s,"exist_s":%s,"reason_s":%s,"create_cpu_ms":%d,"rss1_kib":%d,"pss1_kib":%d,"idle1_cpu_ms":%d,"idle_s":%d,"rss2_kib":%d,"pss2_kib":%d,"rm_s":%s,"final":"%s","load0":%s,"load1":%s}\n' \
    "$kind" "$MEM_TASKS" "$MEM_SVCS" "${m0% *}" "${m0#* }" "$idle0" "$tc" "${t_exist:-null}" "${t_reason:-null}" "$ccreate" \
    "${m1% *}" "${m1#* }" "$idle1" "$IDLE_S" "${m2% *}" "${m2#* }" "$t_rm" "$cnt" "$l0" "$l1" | tee -a "$MEM" >&2
}
if has mem; then
  log "controller memory with $MEM_TASKS pending tasks"
  mem_phase flotilla
  [ "$swarm1_ok" = 1 ] && mem_phase swarm
fi
if [ -n "${PIDS[dockerd13]:-}" ]; then   # the single-node Swarm is done: leave (removes its services), stop
  timeout 60 "$DOCKER" -H "unix://$run/d13/docker.sock" swarm leave --force >/dev/null 2>&1 || true
  kill "${PIDS[dockerd13]}" "${PIDS[ctrd13]:-}" 2>/dev/null || true
fi
kill "${PIDS[fl5]:-}" 2>/dev/null || true
for h in 6 7 8; do
  ids=$("$FL" -H "unix://$run/a$h/agent.sock" ps -aq 2>/dev/null || true)
  [ -n "$ids" ] && "$FL" -H "unix://$run/a$h/agent.sock" rm -f $ids >/dev/null 2>&1
  kill "${PIDS[agent$h]:-}" 2>/dev/null || true
done

# --- Node loss: Docker Swarm, manager h9 (drained) + workers h10-h12 ----------------------------------
swarm_ok=0 swarm_why="skipped (SWARM=0, or no loss phase)"
if [ "$SWARM" = 1 ] && ((SWARM_ROUNDS > 0)); then
  log "node loss (Docker Swarm): 1 manager + 3 workers"
  if swarm_setup 2> "$work/swarm-setup.err"; then
    swarm_ok=1 swarm_why=""
    for r in $(seq "$SWARM_ROUNDS"); do
      wait_quiet
      svc=loss$r victim=$((10 + (r - 1) % 3))
      vname=$(ns "$victim")
      dk 9 service create -d --name "$svc" --replicas 6 --no-resolve-image --stop-signal SIGKILL \
        busybox:latest sleep 100000 >/dev/null
      for _ in $(seq 300); do [ "$(running_sw "$svc")" = 6 ] && break; sleep 0.2; done
      on_victim=$({ dk 9 service ps --filter desired-state=running --format '{{.Node}}|{{.CurrentState}}' "$svc" || true; } | awk -F'|' -v x="$vname" '$1 == x && $2 ~ /^Running/' | wc -l)
      note_load "nl-swarm"
      t0=$EPOCHREALTIME
      kill -9 "${PIDS[dockerd$victim]}" || true; link "$victim" down
      t_down="" t_run=""
      for _ in $(seq 600); do
        now=$EPOCHREALTIME
        [ -z "$t_down" ] && [ "$(dk 9 node inspect -f '{{.Status.State}}' "$vname" 2>/dev/null)" = down ] &&
          t_down=$(awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.2f", b-a}')
        if [ "$(running_sw "$svc" "$vname")" = 6 ]; then t_run=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}'); break; fi
        sleep 0.2
      done
      printf '{"kind":"swarm","round":%d,"moved":%d,"down_s":%s,"running_s":%s}\n' "$r" "$on_victim" "${t_down:-null}" "${t_run:-null}" |
        tee -a "$NL" >&2
      link "$victim" up
      gone "${PIDS[dockerd$victim]}"
      start_dockerd "$victim" || log "WARNING: dockerd of h$victim did not restart"
      for _ in $(seq 150); do [ "$(dk 9 node inspect -f '{{.Status.State}}' "$vname" 2>/dev/null)" = ready ] && break; sleep 0.2; done
      dk 9 service rm "$svc" >/dev/null || log "WARNING: docker service rm $svc failed"
      for _ in $(seq 300); do
        left=0
        for h in 10 11 12; do left=$((left + $({ dk "$h" ps -q 2>/dev/null || true; } | wc -l))); done
        [ "$left" = 0 ] && break; sleep 0.2
      done
    done
  else
    swarm_why="Swarm did not start: $(tail -3 "$work/swarm-setup.err" | tr '\n' ' ')"
    log "WARNING: $swarm_why"
  fi
fi

# --- Report -----------------------------------------------------------------------------------------------
[ -z "${BENCH_OUT:-}" ] || cp "$work"/*.jsonl "$work/sched.log" "$out"/ 2>/dev/null || true
med() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"; exit} if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
maxv() { sort -g | tail -1; }
# wsel KIND VIA CLIENTS FIELD: the FIELD of every write round of that shape, one per line
wsel() { jq -r --arg k "$1" --arg v "$2" --argjson c "$3" "select(.kind==\$k and .via==\$v and .clients==\$c) | .$4" "$W"; }
ratio() { awk -v a="$1" -v b="$2" -v inv="${3:-0}" 'BEGIN{ if (b+0 == 0 || a+0 == 0) {print "—"; exit} printf "%.2f", (inv ? b/a : a/b) }'; }
fmt() { awk -v x="$1" -v d="${2:-1}" 'BEGIN{ if (x == "nan" || x == "") print "—"; else printf "%.*f", d, x }'; }
yes_no() { awk -v c="$1" 'BEGIN{print (c ? "**met**" : "**not met**")}'; }

elapsed=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')
echo "## Cluster benchmark (issue 4): \`deploy/bench/cluster.sh\`"
echo
echo "Run at $(date -u '+%Y-%m-%d %H:%M') UTC, built from $src_rev, $(nproc) CPUs, kernel $(uname -r); took ${elapsed} s."
echo "Peers: $etcd_version; $("$DOCKERD" --version 2>/dev/null | head -1)."
lsum=$(printf '%s\n' "${loads[@]##*:}" | sort -g | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%s to %s, median %s", a[1], a[NR], m}')
echo "Load average (1 min) when each of the ${#loads[@]} measurements started: $lsum."
echo
echo "| metric | flotilla | peer | flotilla / peer | target | met? |"
echo "|---|---:|---:|---:|---|---|"
for c in 1 64; do
  if [ "$c" = 1 ]; then who="1 client"; else who="64 clients / 8 conns"; fi
  for via in leader follower; do
    fw=$(wsel flotilla "$via" "$c" wps | med) ew=$(wsel etcd "$via" "$c" wps | med)
    fp50=$(wsel flotilla "$via" "$c" p50_ms | med) ep50=$(wsel etcd "$via" "$c" p50_ms | med)
    fp99=$(wsel flotilla "$via" "$c" p99_ms | med) ep99=$(wsel etcd "$via" "$c" p99_ms | med)
    rw=$(ratio "$fw" "$ew")
    if [ "$via" = leader ]; then tgt="≥ 1.0× etcd"; met=$(yes_no "$(awk -v r="$rw" 'BEGIN{print (r+0 >= 1.0)}')"); else tgt="" met=""; fi
    echo "| writes/s, $who, via the $via (CreateConfig vs Put) | $(fmt "$fw" 0) | $(fmt "$ew" 0) (etcd) | $rw | $tgt | $met |"
    echo "| p50 / p99 latency (ms), $who, via the $via | $(fmt "$fp50" 2) / $(fmt "$fp99" 2) | $(fmt "$ep50" 2) / $(fmt "$ep99" 2) | $(ratio "$fp50" "$ep50") / $(ratio "$fp99" "$ep99") | | |"
  done
  fc=$(wsel flotilla leader "$c" cpu_us_per_write | med) ec=$(wsel etcd leader "$c" cpu_us_per_write | med)
  echo "| CPU of the 3 members per write (µs), $who, via the leader (CreateConfig vs Put) | $(fmt "$fc" 0) | $(fmt "$ec" 0) (etcd) | $(ratio "$fc" "$ec") | | |"
  [ "$c" = 1 ] || continue
  uw=$(wsel flotilla-update-node leader "$c" wps | med) ew=$(wsel etcd leader "$c" wps | med)
  ep50=$(wsel etcd leader "$c" p50_ms | med) ep99=$(wsel etcd leader "$c" p99_ms | med)
  up50=$(wsel flotilla-update-node leader "$c" p50_ms | med) up99=$(wsel flotilla-update-node leader "$c" p99_ms | med)
  ru=$(ratio "$uw" "$ew")
  echo "| writes/s, $who, via the leader (UpdateNode vs Put) | $(fmt "$uw" 0) | $(fmt "$ew" 0) (etcd) | $ru | ≥ 1.0× etcd | $(yes_no "$(awk -v r="$ru" 'BEGIN{print (r+0 >= 1.0)}')") |"
  echo "| p50 / p99 latency (ms), $who, UpdateNode via the leader | $(fmt "$up50" 2) / $(fmt "$up99" 2) | $(fmt "$ep50" 2) / $(fmt "$ep99" 2) | $(ratio "$up50" "$ep50") / $(ratio "$up99" "$ep99") | | |"
  uc=$(wsel flotilla-update-node leader "$c" cpu_us_per_write | med)
  echo "| CPU of the 3 members per write (µs), $who, UpdateNode via the leader | $(fmt "$uc" 0) | $(fmt "$ec" 0) (etcd) | $(ratio "$uc" "$ec") | | |"
done
fsel() { jq -r --arg k "$1" "select(.kind==\$k and .ok) | .first_write_ms / 1000" "$F"; }
fnok() { jq -r --arg k "$1" "select(.kind==\$k and (.ok|not)) | 1" "$F" | wc -l; }
ffm=$(fsel flotilla | med) fem=$(fsel etcd | med) ffx=$(fsel flotilla | maxv) fex=$(fsel etcd | maxv)
echo "| leader failover: kill -9 → first write (s), median of $(fsel flotilla | wc -l) / $(fsel etcd | wc -l) | $(fmt "$ffm" 2) | $(fmt "$fem" 2) (etcd) | $(ratio "$ffm" "$fem") | | |"
echo "| leader failover, max (s) | $(fmt "$ffx" 2) | $(fmt "$fex" 2) (etcd) | $(ratio "$ffx" "$fex") | p99 ≤ 2 s | $(yes_no "$(awk -v x="${ffx:-99}" 'BEGIN{print (x != "" && x+0 <= 2.0)}')") |"
nsel() { jq -r --arg k "$1" "select(.kind==\$k and .$2 != null) | .$2" "$NL" 2>/dev/null; }
nfr=$(nsel flotilla running_s | med) nsr=$(nsel swarm running_s | med) nfx=$(nsel flotilla running_s | maxv)
nfd=$(nsel flotilla down_s | med) nsd=$(nsel swarm down_s | med)
echo "| node loss → 6/6 running again (s), median of $(nsel flotilla running_s | wc -l) / $(nsel swarm running_s | wc -l) | $(fmt "$nfr" 2) | $(fmt "$nsr" 2) (Swarm) | $(ratio "$nfr" "$nsr") | ≤ 10 s | $(yes_no "$(awk -v x="${nfx:-99}" 'BEGIN{print (x != "" && x+0 <= 10.0)}')") (max $(fmt "$nfx" 2)) |"
echo "| node loss → node DOWN (s), median | $(fmt "$nfd" 2) | $(fmt "$nsd" 2) (Swarm) | $(ratio "$nfd" "$nsd") | | |"
echo "| scheduler: placements/s, wall (1M tasks, 10k nodes, one thread) | $(fmt "$sched_pps" 0) | 3,750 (Nomad C1M, end to end) | $(ratio "$sched_pps" 3750) | ≥ 100,000/s | $(yes_no "$(awk -v x="${sched_pps:-0}" 'BEGIN{print (x+0 >= 100000)}')") |"
echo "| scheduler: placements per CPU-second | $(fmt "$sched_cpu" 0) | | | | |"
ssel() { jq -r --arg k "$1" --arg t "$2" "select(.kind==\$k and (.tag|test(\$t)) and .running_s != null) | .running_s" "$SC" 2>/dev/null; }
if [ -s "$SC" ]; then
  sfr=$(ssel flotilla '^r' | med) ssr=$(ssel swarm '^r' | med) rs=$(ratio "$(ssel flotilla '^r' | med)" "$(ssel swarm '^r' | med)")
  echo "| service create --replicas $SCALE_N → all running (s), median of $(ssel flotilla '^r' | wc -l) / $(ssel swarm '^r' | wc -l); flotilla 1 manager + 3 workers, Swarm 1 node | $(fmt "$sfr" 2) | $(fmt "$ssr" 2) (Swarm, 1 node) | $rs | ≤ 0.3× | $(yes_no "$(awk -v r="$rs" 'BEGIN{print (r != "—" && r+0 <= 0.3)}')") |"
  sfb=$(ssel flotilla '^with' | med) ssb=$(ssel swarm '^with' | med)
  [ "$sfb" = nan ] && [ "$ssb" = nan ] ||
    echo "| the same with $MEM_TASKS pending tasks in the store (s), 1 round | $(fmt "$sfb" 2) | $(fmt "$ssb" 2) (Swarm, 1 node) | $(ratio "$sfb" "$ssb") | | |"
fi
# msel KIND JQ-EXPRESSION: a value of the memory phase's line of KIND
msel() { jq -r --arg k "$1" "select(.kind==\$k) | $2" "$MEM" 2>/dev/null | head -1; }
if [ -s "$MEM" ]; then
  for w in "idle (no task)|rss0_kib|pss0_kib" "with $MEM_TASKS pending tasks|rss1_kib|pss1_kib"; do
    IFS='|' read -r what r p <<< "$w"
    fr=$(msel flotilla ".$r") fp=$(msel flotilla ".$p") sr=$(msel swarm ".$r") sp=$(msel swarm ".$p")
    echo "| manager memory $what: RSS / PSS (MiB) | $(fmt "$(awk -v x="$fr" 'BEGIN{print x/1024}')" 1) / $(fmt "$(awk -v x="$fp" 'BEGIN{print x/1024}')" 1) | $(fmt "$(awk -v x="$sr" 'BEGIN{print x/1024}')" 1) / $(fmt "$(awk -v x="$sp" 'BEGIN{print x/1024}')" 1) (dockerd) | $(ratio "$fr" "$sr") / $(ratio "$fp" "$sp") | | |"
  done
  fpt=$(msel flotilla '(.pss1_kib - .pss0_kib) * 1024 / .tasks') spt=$(msel swarm '(.pss1_kib - .pss0_kib) * 1024 / .tasks')
  echo "| manager memory per pending task: PSS increase / tasks (bytes) | $(fmt "$fpt" 0) | $(fmt "$spt" 0) (dockerd) | $(ratio "$fpt" "$spt") | | |"
  fe=$(msel flotilla .exist_s) fx=$(msel flotilla .reason_s) se=$(msel swarm .exist_s) sx=$(msel swarm .reason_s)
  echo "| create $MEM_TASKS pending tasks ($MEM_SVCS services): all exist / all pending with a reason (s) | $(fmt "$fe" 1) / $(fmt "$fx" 1) | $(fmt "$se" 1) / $(fmt "$sx" 1) (Swarm) | $(ratio "$fe" "$se") / $(ratio "$fx" "$sx") | | |"
  fc=$(msel flotilla '.create_cpu_ms / 1000') sc=$(msel swarm '.create_cpu_ms / 1000')
  echo "| manager CPU over that creation, polls included (s) | $(fmt "$fc" 2) | $(fmt "$sc" 2) (dockerd) | $(ratio "$fc" "$sc") | | |"
  fi0=$(msel flotilla '.idle0_cpu_ms / .idle_s') fi1=$(msel flotilla '.idle1_cpu_ms / .idle_s')
  si0=$(msel swarm '.idle0_cpu_ms / .idle_s') si1=$(msel swarm '.idle1_cpu_ms / .idle_s')
  echo "| manager CPU while idle, no task → $MEM_TASKS pending tasks (ms per s) | $(fmt "$fi0" 1) → $(fmt "$fi1" 1) | $(fmt "$si0" 1) → $(fmt "$si1" 1) (dockerd) | $(ratio "$fi1" "$si1") (with tasks) | | |"
  frm=$(msel flotilla .rm_s) srm=$(msel swarm .rm_s)
  echo "| remove the $MEM_SVCS services until no task is listed (s) | $(fmt "$frm" 1) | $(fmt "$srm" 1) (Swarm) | $(ratio "$frm" "$srm") | | |"
fi
if { ((SCALE_ROUNDS > 0)) || has mem; } && [ "$swarm1_ok" != 1 ]; then echo; echo "Single-node Swarm: $swarm1_why"; fi
[ "$swarm_ok" = 1 ] || { echo; echo "Swarm: $swarm_why"; }
echo
echo "Scheduler bench line: \`${sched_line:-none}\`"
echo
echo "### Raw rounds"
echo
echo "Writes (kind, via, clients, round: writes/s, p50, p99, max ms, errors, CPU µs of the 3 members per write):"
echo '```'
jq -r '[.kind, .via, (.clients|tostring), .label, (.wps|floor|tostring), (.p50_ms|tostring), (.p99_ms|tostring), (.max_ms|tostring), (.errors|tostring), (.cpu_us_per_write|floor|tostring)] | join(" ")' "$W"
echo '```'
echo "Failover (kind: seconds from kill -9 of the leader to the first write through a survivor):"
echo '```'
jq -r '"\(.kind) killed \(.killed) -> \(if .ok then (.first_write_ms/1000*1000|floor/1000|tostring) + " s via " + .via else "NO WRITE within the limit" end)"' "$F"
echo '```'
echo "Load average when each measurement started, in order: $(printf '%s ' "${loads[@]}")"
echo
echo "Node loss (kind, round, tasks on the killed node, s to DOWN, s to 6/6 running):"
echo '```'
jq -r '"\(.kind) round \(.round): moved \(.moved), down \(.down_s) s, running \(.running_s) s"' "$NL" 2>/dev/null
echo '```'
echo
echo "service create --replicas $SCALE_N (kind, round: s to all running, s the create command took, polls, manager CPU, load at start):"
echo '```'
jq -r '"\(.kind) \(.tag): \(.running_s) s (create \(.create_cmd_s) s, \(.polls) polls, manager CPU \(.mgr_cpu_ms) ms, load \(.load))"' "$SC" 2>/dev/null
echo '```'
echo "Memory phase (one JSON line per side; KiB, ms, s):"
echo '```'
cat "$MEM"
echo '```'
