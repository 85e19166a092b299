#!/usr/bin/env bash
# Node agent benchmark (issue 3): `flotilla-agent serve` + the `flotilla` CLI side by side with
# dockerd 20.10 + containerd 1.6 (Debian docker.io), on the same busybox rootfs, in one run.
#
#   sudo deploy/bench/agent.sh > agent.md     # markdown report on stdout, progress on stderr
#
# What it does:
#   1. installs packages (deploy/setup.sh, and docker.io when /usr/sbin/dockerd is missing) and
#      builds flotilla's release binaries;
#   2. starts, each with private state: flotilla-agent serve (--state-dir on disk, --run-dir on a
#      private tmpfs, its own network slice: bridge $FL_BRIDGE, subnet $FL_SUBNET, pool $FL_POOL,
#      bridge prefix $FL_PREFIX, nft table $FL_NFT), and containerd + dockerd (--data-root on disk,
#      --exec-root on the same tmpfs, -H unix://..., --bridge=none --iptables=false). containerd is
#      started by this script with docker's own supervisor settings instead of by dockerd, because
#      dockerd 20.10 would attach to a system containerd at /run/containerd if one ran;
#   3. imports one busybox rootfs tar (deploy/lib.sh) into both: `docker import` and
#      `flotilla image import`, CMD /bin/sh and docker's default PATH;
#   4. times `flotilla run --rm --network none busybox true` against
#      `docker run --rm --network none busybox true` with hyperfine -N, in $ROUNDS interleaved
#      rounds of $WARMUP warm-up + $RUNS runs (merged), plus flotilla on its default bridge network;
#   5. reads the idle RSS and PSS (/proc/PID/smaps_rollup) of the agent and of dockerd + containerd;
#   6. starts $N containers (`run -d --network none busybox sleep 3600`) through `xargs -P $PAR`,
#      timing the wall clock; with all of them running it reads the daemons' RSS/PSS and the sum over
#      the shim processes (flotilla-shim; containerd-shim-runc-v2), then removes them (`rm -f`,
#      timed, for the record). $ROUNDS_N rounds per engine, alternating; flotilla also on its bridge.
# Environment: RUNS (30), WARMUP (3), ROUNDS (2), N (100), PAR (16), ROUNDS_N (2),
# MAX_LOAD (1.5: before each measurement waits up to WAIT_S=60 s for the 1-minute load average to
# drop below it), BENCH_OUT (directory to keep the JSON exports and the report), FL_BRIDGE,
# FL_SUBNET, FL_POOL, FL_PREFIX, FL_NFT (the agent's network slice).
# Everything it starts, mounts or creates is removed on exit, also on failure: agent, shims,
# containerd, dockerd, containers, their cgroups, bridges, the nft table, mounts, work directories.
# No traffic leaves the machine (containers run `true`/`sleep`; docker has no bridge).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/lib.sh
[ "$(id -u)" = 0 ] || { echo "agent bench: run as root" >&2; exit 1; }
RUNS=${RUNS:-30} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-2} N=${N:-100} PAR=${PAR:-16} ROUNDS_N=${ROUNDS_N:-2}
MAX_LOAD=${MAX_LOAD:-1.5} WAIT_S=${WAIT_S:-60}
FL_BRIDGE=${FL_BRIDGE:-flbench0} FL_SUBNET=${FL_SUBNET:-10.253.0.0/24} FL_POOL=${FL_POOL:-10.254.0.0/16}
FL_PREFIX=${FL_PREFIX:-flbench-} FL_NFT=${FL_NFT:-flbench}
CG=/sys/fs/cgroup
DOCKER=/usr/bin/docker      # the Debian client matching dockerd 20.10 (/usr/local/bin/docker may be newer)
DOCKERD=/usr/sbin/dockerd
CONTAINERD=/usr/bin/containerd
DSHIM=/usr/bin/containerd-shim-runc-v2

log() { printf '[agent bench] %s\n' "$*" >&2; }

deploy/setup.sh
if [ ! -x "$DOCKERD" ]; then
  log "installing docker.io (dockerd 20.10, the benchmark's peer)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
log "building release binaries"
cargo build --release --workspace --bins -q
# what was built: the commit and whether the sources differed from it at build time
src_rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- agent controller proto Cargo.toml Cargo.lock 2>/dev/null || src_rev="$src_rev + uncommitted changes"
bin="$CARGO_TARGET_DIR/release"
FL="$bin/flotilla" AGENT="$bin/flotilla-agent" SHIM="$bin/flotilla-shim" RT="$bin/flotilla-runtime"

# Refuse to share a network slice with another agent (and never delete one this run did not make).
if ip link show "$FL_BRIDGE" >/dev/null 2>&1 || nft list table ip "$FL_NFT" >/dev/null 2>&1; then
  echo "agent bench: bridge $FL_BRIDGE or nft table ip $FL_NFT exists already (another run?); set FL_BRIDGE/FL_NFT/FL_SUBNET/FL_POOL/FL_PREFIX" >&2
  exit 1
fi

work=$(mktemp -d /var/tmp/flotilla-bench-agent.XXXXXX) # disk, like /var/lib
run="$work/run"                                         # tmpfs, like /run
fl_state="$work/flotilla" fl_run="$run/flotilla"
d_data="$work/docker" d_exec="$run/docker" c_run="$run/containerd"
fl_sock="$fl_run/agent.sock" d_sock="$run/docker.sock" c_sock="$c_run/containerd.sock"
export DOCKER_CONFIG="$work/docker-cli" # the docker client writes nothing under ~root
agent_pid="" dockerd_pid="" containerd_pid="" run_mounted=0
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
had_run_containerd=0; [ -e /run/containerd ] && had_run_containerd=1
had_key_json=0; [ -e /etc/docker/key.json ] && had_key_json=1 # dockerd 20.10 writes its trust key there

# pids_of EXE NEEDLE: pids whose executable is EXE and whose command line contains NEEDLE.
pids_of() {
  local p want
  want=$(readlink -f "$1")   # /proc/PID/exe is the resolved path ($CARGO_TARGET_DIR may be a symlink)
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = "$want" ] || continue
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF -- "$2" && echo "${p#/proc/}"
  done
  return 0
}
# stop PID SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop() {
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for i in $(seq $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
# kill_cgroup_dirs PARENT ID...: kills what is left in PARENT/ID of every hierarchy, removes the dirs.
kill_cgroup_dirs() {
  local parent=$1 id d p; shift
  for id in "$@"; do
    for d in "$CG"/*/"$parent/$id"; do
      [ -d "$d" ] || continue
      for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    for d in "$CG"/*/"$parent/$id"; do
      [ -d "$d" ] || continue
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || { sleep 0.2; find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null; }
    done
  done
  return 0
}
cleanup() {
  set +e
  local ids p m l
  log "cleaning up"
  # flotilla: containers through the agent, then the agent, leftover shims and runtime state.
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    ids=$(timeout 20 "$FL" -H "unix://$fl_sock" ps -aq 2>/dev/null)
    [ -n "$ids" ] && printf '%s\n' $ids | timeout 120 xargs -r -n 20 "$FL" -H "unix://$fl_sock" rm -f >/dev/null 2>&1
  fi
  stop "$agent_pid" 10
  for p in $(pids_of "$SHIM" "$work/"); do kill -9 "$p" 2>/dev/null; done
  if [ -d "$fl_run/runtime" ]; then
    for l in "$fl_run/runtime"/*; do
      [ -e "$l" ] && "$RT" --root "$fl_run/runtime" delete --force "$(basename "$l")" >/dev/null 2>&1
    done
  fi
  [ -d "$fl_state/containers" ] && kill_cgroup_dirs flotilla $(ls "$fl_state/containers")
  # docker: containers through dockerd, then dockerd, its shims, containerd.
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    ids=$(timeout 20 "$DOCKER" -H "unix://$d_sock" ps -aq 2>/dev/null)
    [ -n "$ids" ] && printf '%s\n' $ids | timeout 180 xargs -r -n 20 "$DOCKER" -H "unix://$d_sock" rm -f >/dev/null 2>&1
  fi
  stop "$dockerd_pid" 15
  for p in $(pids_of "$DSHIM" "$c_sock"); do kill -9 "$p" 2>/dev/null; done
  stop "$containerd_pid" 10
  [ -d "$d_data/containers" ] && kill_cgroup_dirs docker $(ls "$d_data/containers")
  for m in "$CG"/*/docker; do rmdir "$m" 2>/dev/null; done # the empty parents docker leaves (TESTLAB)
  [ "$had_run_containerd" = 0 ] && { rmdir /run/containerd/s /run/containerd 2>/dev/null; }
  [ "$had_key_json" = 0 ] && rm -f /etc/docker/key.json && rmdir /etc/docker 2>/dev/null
  # the agent's network slice (only made by this run: checked before start)
  if [ "${net_owned:-0}" = 1 ]; then
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      case "$l" in "$FL_BRIDGE"|"$FL_PREFIX"*) ip link del "$l" 2>/dev/null ;; esac
    done
    nft delete table ip "$FL_NFT" 2>/dev/null
    # ip_forward back to 0 only if it was 0 and no other flotilla agent or dockerd runs now
    if [ "$fwd_before" = 0 ] && ! pgrep -x flotilla-agent >/dev/null && ! pgrep -x dockerd >/dev/null; then
      echo 0 > /proc/sys/net/ipv4/ip_forward
    fi
  fi
  # mounts under the work dir (overlay rootfs, netns files, the tmpfs), deepest first
  for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
net_owned=1

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN{exit !(l > m)}'; do
    if ((waited >= WAIT_S)); then log "WARNING: load $(load1) is still above $MAX_LOAD: measuring anyway"; return; fi
    ((waited == 0)) && log "load average $(load1) > $MAX_LOAD: waiting (up to ${WAIT_S}s)"
    sleep 5; waited=$((waited + 5))
  done
}
loads=() # the load when each measurement started
note_load() { loads+=("$(load1)"); }

mkdir -p "$run" "$fl_state" "$d_data" "$DOCKER_CONFIG"
mount -t tmpfs -o size=1g,mode=0755 flotilla-bench-agent "$run" && run_mounted=1
mkdir -p "$fl_run" "$d_exec" "$c_run"
busybox_tar "$work/busybox.tar"

# --- Start the daemons ---------------------------------------------------------------------------
FLC=("$FL" -H "unix://$fl_sock")
DKC=("$DOCKER" -H "unix://$d_sock")
"$AGENT" serve --state-dir "$fl_state" --run-dir "$fl_run" --bridge-name "$FL_BRIDGE" \
  --bridge-subnet "$FL_SUBNET" --network-pool "$FL_POOL" --bridge-prefix "$FL_PREFIX" \
  --nft-table "$FL_NFT" > "$work/agent.log" 2>&1 &
agent_pid=$!
t0=$EPOCHREALTIME
for _ in $(seq 200); do "${FLC[@]}" version >/dev/null 2>&1 && break; sleep 0.05; done
"${FLC[@]}" version >/dev/null || { cat "$work/agent.log" >&2; echo "agent bench: flotilla-agent did not start" >&2; exit 1; }
fl_ready=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')
log "flotilla-agent ready in ${fl_ready}s"

docker_ok=1 docker_why=""
# containerd with the settings dockerd's supervisor gives it (own root/state/socket, no CRI).
cat > "$work/containerd.toml" <<TOML
version = 2
root = "$d_data/containerd/daemon"
state = "$c_run/daemon"
oom_score = -500
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c_sock"
[ttrpc]
  address = "$c_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
"$CONTAINERD" --config "$work/containerd.toml" > "$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do [ -S "$c_sock" ] && break; sleep 0.05; done
if [ -S "$c_sock" ]; then
  "$DOCKERD" --containerd "$c_sock" --data-root "$d_data" --exec-root "$d_exec" -H "unix://$d_sock" \
    --pidfile "$d_exec/docker.pid" --bridge=none --iptables=false --ip6tables=false \
    > "$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  t0=$EPOCHREALTIME
  for _ in $(seq 200); do "${DKC[@]}" version >/dev/null 2>&1 && break; sleep 0.05; done
  if "${DKC[@]}" version >/dev/null 2>&1; then
    d_ready=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')
    log "dockerd ready in ${d_ready}s"
  else
    docker_ok=0 docker_why="dockerd did not start: $(tail -3 "$work/dockerd.log" | tr '\n' ' ')"
  fi
else
  docker_ok=0 docker_why="containerd did not start: $(tail -3 "$work/containerd.log" | tr '\n' ' ')"
fi
[ "$docker_ok" = 1 ] || log "WARNING: docker cannot run: $docker_why"

# --- Memory helpers ----------------------------------------------------------------------------------
# rp PID...: "RSS PSS" in KiB, summed over the processes (smaps_rollup).
rp() {
  local p r=0 s=0 a b
  for p in "$@"; do
    read -r a b < <(awk '/^Rss:/{r=$2} /^Pss:/{s=$2} END{print r+0, s+0}' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
    r=$((r + a)) s=$((s + b))
  done
  echo "$r $s"
}
docker_daemons() { echo "$dockerd_pid $containerd_pid"; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

# fresh: just started, nothing imported yet
sleep 1
read -r fresh_fl_rss fresh_fl_pss < <(rp "$agent_pid")
fresh_d_rss=0 fresh_d_pss=0
[ "$docker_ok" = 1 ] && read -r fresh_d_rss fresh_d_pss < <(rp $(docker_daemons))

# --- The same image in both ---------------------------------------------------------------------------
"${FLC[@]}" image import "$work/busybox.tar" busybox:latest -c 'CMD /bin/sh' -c "ENV $BUSYBOX_PATH_ENV" >/dev/null
if [ "$docker_ok" = 1 ]; then
  "${DKC[@]}" import -c 'CMD ["/bin/sh"]' -c "ENV $BUSYBOX_PATH_ENV" "$work/busybox.tar" busybox:latest >/dev/null
fi
# one checked run of each measured command
"${FLC[@]}" run --rm --network none busybox true
"${FLC[@]}" run --rm busybox true
if [ "$docker_ok" = 1 ] && ! out=$("${DKC[@]}" run --rm --network none busybox true 2>&1); then
  docker_ok=0 docker_why="docker run failed: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"
  log "WARNING: $docker_why"
fi

# idle: after the image import and the check runs, nothing running
sleep 2
read -r idle_fl_rss idle_fl_pss < <(rp "$agent_pid")
idle_d_rss=0 idle_d_pss=0 idle_dd_rss=0 idle_c_rss=0
if [ "$docker_ok" = 1 ]; then
  read -r idle_d_rss idle_d_pss < <(rp $(docker_daemons))
  read -r idle_dd_rss _ < <(rp "$dockerd_pid"); read -r idle_c_rss _ < <(rp "$containerd_pid")
fi
log "idle RSS: agent $(mib "$idle_fl_rss") MiB; dockerd+containerd $(mib "$idle_d_rss") MiB"

# --- 1. run --rm ... true ----------------------------------------------------------------------------
merge() {
  jq -s '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def mean: add / length;
    def sd: mean as $m | if length > 1 then (map((. - $m) * (. - $m)) | add / (length - 1) | sqrt) else 0 end;
    {results: [range(0; .[0].results | length) as $i
      | [.[] | .results[$i]] as $r
      | ($r | map(.times) | add) as $t
      | {command: $r[0].command, times: $t, exit_codes: ($r | map(.exit_codes) | add),
         median: ($t | median), mean: ($t | mean), stddev: ($t | sd), min: ($t | min), max: ($t | max)}]}' "$@"
}
hf_args=(-n "flotilla, --network none" "${FLC[*]} run --rm --network none busybox true")
[ "$docker_ok" = 1 ] && hf_args+=(-n "docker, --network none" "${DKC[*]} run --rm --network none busybox true")
hf_args+=(-n "flotilla, default bridge" "${FLC[*]} run --rm busybox true")
for round in $(seq "$ROUNDS"); do
  wait_quiet; note_load
  log "run --rm … true, round $round/$ROUNDS (load $(load1)): $WARMUP warm-up + $RUNS runs each"
  hyperfine -N -i --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$work/run.json.$round" "${hf_args[@]}" >&2
done
merge "$work"/run.json.[0-9]* > "$work/run.json"
sleep 2
read -r after_fl_rss after_fl_pss < <(rp "$agent_pid")
after_d_rss=0 after_d_pss=0
[ "$docker_ok" = 1 ] && read -r after_d_rss after_d_pss < <(rp $(docker_daemons))

# --- 2./3. N containers started in parallel, memory with all of them running ---------------------------
# nrun ENGINE: starts N containers through xargs -P PAR; sets: wall, fails, running, mem figures.
declare -A R # results: R[engine,round,key]
count_running() {
  case "$1" in
    docker) "${DKC[@]}" ps -q | wc -l ;;
    *) "${FLC[@]}" ps -q | wc -l ;;
  esac
}
nrun() {
  local eng=$1 round=$2 cli net=() daemons shims t0 t1 rc base_r base_p r p sr sp n
  case "$eng" in
    docker) cli=("${DKC[@]}"); net=(--network none); daemons=$(docker_daemons) ;;
    flotilla-none) cli=("${FLC[@]}"); net=(--network none); daemons=$agent_pid ;;
    flotilla-bridge) cli=("${FLC[@]}"); daemons=$agent_pid ;;
  esac
  wait_quiet; note_load
  read -r base_r base_p < <(rp $daemons)
  log "$eng: starting $N × run -d busybox sleep 3600, $PAR at a time (round $round, load $(load1))"
  t0=$EPOCHREALTIME
  rc=0
  seq "$N" | xargs -P "$PAR" -I{} "${cli[@]}" run -d "${net[@]}" busybox sleep 3600 > "$work/ids.$eng.$round" 2> "$work/err.$eng.$round" || rc=$?
  t1=$EPOCHREALTIME
  R[$eng,$round,wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  R[$eng,$round,ok]=$(grep -c . "$work/ids.$eng.$round" || true)
  sleep 3 # let the daemons settle
  R[$eng,$round,running]=$(count_running "$eng")
  read -r r p < <(rp $daemons)
  case "$eng" in
    docker) shims=$(pids_of "$DSHIM" "$c_sock") ;;
    *) shims=$(pids_of "$SHIM" "$work/") ;;
  esac
  n=$(echo $shims | wc -w)
  read -r sr sp < <(rp $shims)
  R[$eng,$round,base_rss]=$base_r R[$eng,$round,base_pss]=$base_p
  R[$eng,$round,rss]=$r R[$eng,$round,pss]=$p
  R[$eng,$round,shims]=$n R[$eng,$round,shim_rss]=$sr R[$eng,$round,shim_pss]=$sp
  log "$eng: ${R[$eng,$round,wall]}s, ${R[$eng,$round,running]} running; daemon RSS $(mib "$base_r") → $(mib "$r") MiB; $n shims RSS $(mib "$sr") MiB, PSS $(mib "$sp") MiB"
  # remove them (timed, for the record)
  t0=$EPOCHREALTIME
  "${cli[@]}" ps -q | xargs -r -P "$PAR" -n 10 "${cli[@]}" rm -f > /dev/null 2>> "$work/err.$eng.$round" || true
  t1=$EPOCHREALTIME
  R[$eng,$round,rm]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  for _ in $(seq 100); do [ "$("${cli[@]}" ps -aq | wc -l)" = 0 ] && break; sleep 0.2; done
  R[$eng,$round,left]=$("${cli[@]}" ps -aq | wc -l)
  [ -s "$work/err.$eng.$round" ] && { log "$eng: errors:"; sort "$work/err.$eng.$round" | uniq -c | sort -rn | head -5 >&2; }
  return 0
}
engines=(flotilla-none)
[ "$docker_ok" = 1 ] && engines+=(docker)
engines+=(flotilla-bridge)
for round in $(seq "$ROUNDS_N"); do
  for eng in "${engines[@]}"; do nrun "$eng" "$round"; done
done
sleep 2
read -r end_fl_rss end_fl_pss < <(rp "$agent_pid")
end_d_rss=0 end_d_pss=0
[ "$docker_ok" = 1 ] && read -r end_d_rss end_d_pss < <(rp $(docker_daemons))

# --- Report --------------------------------------------------------------------------------------------
# med ENGINE KEY: median over the rounds.
med() {
  local v=() k
  for k in $(seq "$ROUNDS_N"); do v+=("${R[$1,$k,$2]}"); done
  printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
all() { # ENGINE KEY [mib]: each round's value
  local v=() k
  for k in $(seq "$ROUNDS_N"); do
    if [ "${3:-}" = mib ]; then v+=("$(mib "${R[$1,$k,$2]}")"); else v+=("${R[$1,$k,$2]}"); fi
  done
  echo "${v[*]}" | sed 's/ /, /g'
}
# per-container overhead in KiB: (daemon delta + shims) / N, for RSS or PSS, per round then median
for eng in "${engines[@]}"; do
  for k in $(seq "$ROUNDS_N"); do
    R[$eng,$k,per_rss]=$(( (R[$eng,$k,rss] - R[$eng,$k,base_rss] + R[$eng,$k,shim_rss]) / N ))
    R[$eng,$k,per_pss]=$(( (R[$eng,$k,pss] - R[$eng,$k,base_pss] + R[$eng,$k,shim_pss]) / N ))
    R[$eng,$k,d_delta]=$(( R[$eng,$k,rss] - R[$eng,$k,base_rss] ))
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.3f", a/b; else printf "—" }'; }
hf_med() { jq -r --arg c "$1" '.results[] | select(.command == $c) | .median' "$work/run.json"; }
fl_none=$(hf_med "flotilla, --network none") fl_br=$(hf_med "flotilla, default bridge")
dk_none=$([ "$docker_ok" = 1 ] && hf_med "docker, --network none" || echo 0)
ms() { awk -v s="$1" 'BEGIN{printf "%.1f", s*1000}'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN{ if (v <= t) printf "**met**"; else printf "**not met**" }'; }

report="$work/report.md"
{
  echo "## Agent (issue 3): flotilla-agent + flotilla CLI vs dockerd + containerd, one run"
  echo
  echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); run at $(date -u '+%Y-%m-%d %H:%M') UTC built from $src_rev."
  echo "Versions: $("$FL" --version | head -1), $("$DOCKERD" --version), $("$CONTAINERD" --version | awk '{print "containerd", $3}'), $(runc --version | head -1), hyperfine $(hyperfine --version | awk '{print $2}')."
  if [ "$docker_ok" = 1 ]; then
    echo "Peers: docker ran (dockerd ready in ${d_ready} s; flotilla-agent in ${fl_ready} s)."
  else
    echo "Peers: **docker could not run**: $docker_why"
  fi
  echo "Load average (1 min) when each measurement started: ${loads[*]}."
  echo
  echo "### Summary"
  echo
  echo "| measure | flotilla | docker | flotilla / docker | target |"
  echo "|---|---:|---:|---:|---|"
  echo "| \`run --rm --network none busybox true\`, median | $(ms "$fl_none") ms | $(ms "$dk_none") ms | $(ratio "$fl_none" "$dk_none") | ≤ 0.1× docker: $(verdict "$(ratio "$fl_none" "$dk_none")" 0.1) |"
  echo "| \`run --rm busybox true\` (flotilla's default bridge), median | $(ms "$fl_br") ms | — | $(ratio "$fl_br" "$dk_none") (vs docker none) | |"
  echo "| idle daemon RSS, just started (agent; dockerd + containerd) | $(mib "$fresh_fl_rss") MiB | $(mib "$fresh_d_rss") MiB | $(ratio "$fresh_fl_rss" "$fresh_d_rss") | agent ≤ 15 MiB: $(verdict "$fresh_fl_rss" $((15 * 1024))) |"
  echo "| idle daemon RSS after import + 3 runs | $(mib "$idle_fl_rss") MiB | $(mib "$idle_d_rss") MiB | $(ratio "$idle_fl_rss" "$idle_d_rss") | agent ≤ 15 MiB: $(verdict "$idle_fl_rss" $((15 * 1024))) |"
  e=flotilla-none
  if [ "$docker_ok" = 1 ]; then d=docker; else d=""; fi
  dv() { [ -n "$d" ] && med "$d" "$1" || echo 0; }
  echo "| per-container overhead, RSS: (daemon Δ + shims) / $N | $(mib "$(med $e per_rss)") MiB | $(mib "$(dv per_rss)") MiB | $(ratio "$(med $e per_rss)" "$(dv per_rss)") | ≤ 1 MiB: $(verdict "$(med $e per_rss)" 1024) |"
  echo "| per-container overhead, PSS | $(mib "$(med $e per_pss)") MiB | $(mib "$(dv per_pss)") MiB | $(ratio "$(med $e per_pss)" "$(dv per_pss)") | ≤ 1 MiB: $(verdict "$(med $e per_pss)" 1024) |"
  echo "| start $N × \`run -d --network none busybox sleep 3600\`, $PAR in parallel, wall | $(med $e wall) s | $(dv wall) s | $(ratio "$(med $e wall)" "$(dv wall)") | |"
  echo
  echo "### 1. \`run --rm … busybox true\` through the daemon"
  echo
  echo "hyperfine -N, $ROUNDS rounds of $WARMUP warm-up + $RUNS runs per command, the rounds merged. Both CLIs return once"
  echo "the daemon has removed the container (flotilla since 513c4c1)."
  echo
  echo "| command | median (ms) | mean ± σ (ms) | min (ms) | failed runs | × docker |"
  echo "|---|---:|---:|---:|---:|---:|"
  jq -r --argjson d "$dk_none" '
    def r1: (. * 10 | round) / 10 | tostring;
    def ms: . * 1000 | r1;
    .results[] | "| \(.command) | \(.median | ms) | \(.mean | ms) ± \(.stddev | ms) | \(.min | ms) | "
      + "\([.exit_codes[] | select(. != 0)] | length)/\(.exit_codes | length) | "
      + (if $d > 0 then (.median / $d * 1000 | round / 1000 | tostring) else "—" end) + " |"' "$work/run.json"
  echo
  echo "### 2. Idle daemon memory (KiB from /proc/PID/smaps_rollup)"
  echo
  echo "| | flotilla-agent RSS | PSS | dockerd + containerd RSS | PSS |"
  echo "|---|---:|---:|---:|---:|"
  echo "| just started (1 s after ready, empty store) | $(mib "$fresh_fl_rss") MiB | $(mib "$fresh_fl_pss") MiB | $(mib "$fresh_d_rss") MiB | $(mib "$fresh_d_pss") MiB |"
  echo "| idle after the image import and 3 checked runs | $(mib "$idle_fl_rss") MiB | $(mib "$idle_fl_pss") MiB | $(mib "$idle_d_rss") MiB (dockerd $(mib "$idle_dd_rss") + containerd $(mib "$idle_c_rss")) | $(mib "$idle_d_pss") MiB |"
  echo "| idle after benchmark 1 ($((ROUNDS * (WARMUP + RUNS))) runs per command) | $(mib "$after_fl_rss") MiB | $(mib "$after_fl_pss") MiB | $(mib "$after_d_rss") MiB | $(mib "$after_d_pss") MiB |"
  echo "| idle at the end (all containers removed) | $(mib "$end_fl_rss") MiB | $(mib "$end_fl_pss") MiB | $(mib "$end_d_rss") MiB | $(mib "$end_d_pss") MiB |"
  echo
  echo "### 3. $N running containers (\`run -d busybox sleep 3600\`), started $PAR at a time"
  echo
  echo "$ROUNDS_N rounds per engine, alternating; medians over the rounds, each round's value in brackets. Daemon = flotilla-agent,"
  echo "or dockerd + containerd; shims = flotilla-shim, or containerd-shim-runc-v2 processes; Δ = daemon with $N running − daemon just before."
  echo
  echo "| | flotilla, --network none | docker, --network none | flotilla, default bridge |"
  echo "|---|---:|---:|---:|"
  row() { # LABEL KEY [FMT]
    local line="| $1 |" eng v
    for eng in flotilla-none docker flotilla-bridge; do
      if [[ " ${engines[*]} " == *" $eng "* ]]; then
        case "${3:-}" in
          mib) v="$(mib "$(med "$eng" "$2")") MiB";;
          *) v="$(med "$eng" "$2")";;
        esac
        line+=" $v [$(all "$eng" "$2" "${3:-}")] |"
      else line+=" — |"; fi
    done
    echo "$line"
  }
  row "wall time to start $N (s)" wall
  row "\`run -d\` that printed an id" ok
  row "running after 3 s" running
  row "daemon RSS before" base_rss mib
  row "daemon RSS with $N running" rss mib
  row "daemon Δ RSS" d_delta mib
  row "shim processes" shims
  row "shims, sum of RSS" shim_rss mib
  row "shims, sum of PSS" shim_pss mib
  row "**per container, RSS** (Δ + shims RSS) / $N" per_rss mib
  row "**per container, PSS** (Δ PSS + shims PSS) / $N" per_pss mib
  row "\`rm -f\` of all $N, $PAR × 10 ids at a time (s)" rm
  row "containers left after rm" left
  echo
  echo "TESTLAB reference for docker: runc + containerd-shim ≈ 5.3 MiB per container; each containerd shim ≈ 2.5 MiB PSS."
  for eng in "${engines[@]}"; do
    for k in $(seq "$ROUNDS_N"); do
      if [ -s "$work/err.$eng.$k" ]; then
        echo; echo "Errors, $eng round $k:"; echo '```'; sort "$work/err.$eng.$k" | uniq -c | sort -rn | head -5; echo '```'
      fi
    done
  done
} > "$report"
if [ -n "${BENCH_OUT:-}" ]; then mkdir -p "$BENCH_OUT"; cp "$work"/*.json "$report" "$BENCH_OUT/"; fi
cat "$report"
