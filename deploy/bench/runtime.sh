#!/usr/bin/env bash
# Container start-up benchmark (issue 2): flotilla-runtime vs runc vs crun vs a bare-namespaces
# floor, on one busybox bundle running /bin/true, measured in one run of this script.
#
#   sudo deploy/bench/runtime.sh > runtime.md     # markdown report on stdout, progress on stderr
#
# What it does:
#   1. installs packages (deploy/setup.sh) and builds flotilla's release binaries;
#   2. lays out a busybox bundle on a private tmpfs (rootfs from /bin/busybox + applet symlinks,
#      config.json from `flotilla-runtime spec -- /bin/true`, terminal false); runc and crun read
#      that same config.json (the script checks that each accepts it);
#   3. times `flotilla-runtime run`, `runc run`, `crun run` and the floor
#      `unshare -m -u -i -n -p -f --mount-proc chroot rootfs /bin/true` with hyperfine -N:
#      $WARMUP warm-up and $RUNS runs back to back, then $RUNS_SPACED runs each after an untimed
#      $GAP_S s idle gap (when starts are spaced, the kernel makes every cgroup.procs write wait
#      for an RCU grace period). Each run gets a new container id: every command is started
#      through `idexec`, a 10-line static C wrapper compiled here that replaces the argument @ID@
#      by "fbench<its pid>" and execs; the floor goes through it too, so every row includes the
#      wrapper's cost, which is reported on its own row;
#   4. crun 1.8 refuses hybrid hosts whose cgroup2 still holds hugetlb. If crun cannot run, the
#      host's own layout is measured first without crun, then hugetlb is bound to cgroup v1
#      (only if it is not mounted already) and all four are measured again side by side. The
#      mount is undone at the end only if this script made it and no child cgroup is left in it;
#   5. bisects the lowest linux.resources.memory.limit (4 KiB steps, 3 of 3 runs must succeed) at
#      which each runtime still starts /bin/true, and probes the kernel's own minimum;
#   6. runs `flotilla-runtime run` $LOOP times in a row: counts non-zero exits and checks that no
#      state directory and no cgroup directory is left behind.
# Environment: RUNS (200), WARMUP (10), RUNS_SPACED (100), GAP_S (0.05), LOOP (1000),
# MAX_LOAD (1.5: waits up to WAIT_S=300 s for the 1-minute load average to drop below it),
# BENCH_OUT (directory to keep hyperfine's JSON exports and the report).
# Everything it starts or mounts is removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "runtime bench: run as root" >&2; exit 1; }
RUNS=${RUNS:-200} WARMUP=${WARMUP:-10} RUNS_SPACED=${RUNS_SPACED:-100} GAP_S=${GAP_S:-0.05}
LOOP=${LOOP:-1000} MAX_LOAD=${MAX_LOAD:-1.5} WAIT_S=${WAIT_S:-300}
CG=/sys/fs/cgroup
HUGETLB=$CG/hugetlb

log() { printf '[runtime bench] %s\n' "$*" >&2; }

deploy/setup.sh
command -v cc >/dev/null || { echo "runtime bench: a C compiler (cc) is needed for the id wrapper" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
log "building release binaries"
cargo build --release --bins -q
bin="$CARGO_TARGET_DIR/release"
flot="$bin/flotilla-runtime"

work=$(mktemp -d /tmp/flotilla-bench-runtime.XXXXXX)
tmpfs_mounted=0 hugetlb_mounted=0 hugetlb_dir_made=0 kp=""
hugetlb_cgroups() { awk '$1 == "hugetlb" {print $3}' /proc/cgroups; }
# undo_hugetlb: remove this script's cgroups from the hugetlb v1 hierarchy it mounted, then
# unmount it so that the kernel gives hugetlb back to cgroup2. The kernel keeps a v1 hierarchy
# alive after umount while a removed child is still being released, so wait for that first.
undo_hugetlb() {
  [ "$hugetlb_mounted" = 1 ] || return 0
  local i
  find "$HUGETLB" -mindepth 1 -depth -type d -name 'fbench*' -exec rmdir {} \; 2>/dev/null
  rmdir "$HUGETLB/flotilla" 2>/dev/null # flotilla's shared parent, made in this hierarchy by this script
  if [ -n "$(find "$HUGETLB" -mindepth 1 -maxdepth 1 -type d)" ]; then
    log "WARNING: child cgroups remain under $HUGETLB (another user?): left it mounted"
    return 1
  fi
  for attempt in 1 2 3; do
    for i in $(seq 50); do [ "$(hugetlb_cgroups)" = 1 ] && break; sleep 0.1; done
    umount "$HUGETLB" || return 1
    # A mount namespace made while the hierarchy was mounted (any container started meanwhile,
    # by anyone) keeps it alive until that namespace goes: wait for it.
    for i in $(seq 300); do grep -qw hugetlb "$CG/unified/cgroup.controllers" && break; sleep 0.1; done
    if grep -qw hugetlb "$CG/unified/cgroup.controllers"; then
      hugetlb_mounted=0
      [ "$hugetlb_dir_made" = 1 ] && rmdir "$HUGETLB" && hugetlb_dir_made=0
      log "hugetlb v1 mount undone: cgroup2 has hugetlb again"
      return 0
    fi
    log "hugetlb did not return to cgroup2 (attempt $attempt): mounting and unmounting again"
    mount -t cgroup -o hugetlb cgroup "$HUGETLB" || return 1
  done
  log "WARNING: hugetlb is still bound to cgroup v1 (mounted at $HUGETLB)"
  return 1
}
cleanup() {
  set +e
  local st
  if [ -n "$kp" ]; then kill "$kp" 2>/dev/null; wait "$kp" 2>/dev/null; fi # the kernel-minimum probe
  # Containers left by an interrupted run (normally none: `run` deletes them).
  for st in "$work"/state/*; do
    [ -d "$st" ] || continue
    case "$(basename "$st")" in
      runc*) for id in $(runc --root "$st" list -q 2>/dev/null); do runc --root "$st" delete -f "$id"; done ;;
      crun*) for id in $(crun --root "$st" list -q 2>/dev/null); do crun --root "$st" delete -f "$id"; done ;;
      *) for id in $(ls "$st" 2>/dev/null); do "$flot" --root "$st" delete --force "$id" >/dev/null 2>&1; done ;;
    esac
  done
  # This script's cgroups (ids start with "fbench"), deepest first.
  find "$CG" -mindepth 2 -maxdepth 6 -depth -type d -name 'fbench*' -exec rmdir {} \; 2>/dev/null
  undo_hugetlb
  [ "$tmpfs_mounted" = 1 ] && umount "$work"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN{exit !(l > m)}'; do
    if ((waited >= WAIT_S)); then log "WARNING: load $(load1) is still above $MAX_LOAD: measuring anyway"; return; fi
    ((waited == 0)) && log "load average $(load1) > $MAX_LOAD: waiting (up to ${WAIT_S}s)"
    sleep 10; waited=$((waited + 10))
  done
}

# --- Bundle, state roots and the id wrapper, all on a private tmpfs --------------------------
mount -t tmpfs -o size=512m,mode=0700 flotilla-bench "$work" && tmpfs_mounted=1
b="$work/bundle"
mkdir -p "$b/rootfs"/{bin,proc,sys,dev,tmp,etc,root} "$work/state"
cp /bin/busybox "$b/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$b/rootfs/bin/$a"; done
chmod 1777 "$b/rootfs/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' > "$b/rootfs/etc/passwd"
echo 'root:x:0:' > "$b/rootfs/etc/group"
"$flot" spec --bundle "$b" -- /bin/true
# terminal false (flotilla's default already; runc's own `spec` would say true and fail without a tty).
jq '.process.terminal = false' "$b/config.json" > "$b/config.json.new" && mv "$b/config.json.new" "$b/config.json"
cat > "$work/idexec.c" <<'C'
/* idexec CMD ARG...: replaces each argument "@ID@" by "fbench<pid>" and execs CMD. The pid is
   new for every run, so every container gets a fresh id without a shell in the measured path. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  static char id[32];
  if (argc < 2) return 127;
  snprintf(id, sizeof id, "fbench%d", (int)getpid());
  for (int i = 1; i < argc; i++) if (strcmp(argv[i], "@ID@") == 0) argv[i] = id;
  execvp(argv[1], argv + 1);
  perror(argv[1]);
  return 127;
}
C
cc -O2 -static -o "$work/idexec" "$work/idexec.c" 2>/dev/null || cc -O2 -o "$work/idexec" "$work/idexec.c"
idexec="$work/idexec"

# rt NAME ARGS...: one runtime with its own state root.
rt() {
  local name=$1; shift
  mkdir -p "$work/state/$name"
  case "$name" in
    flotilla*) "$flot" --root "$work/state/$name" "$@" ;;
    runc*) runc --root "$work/state/$name" "$@" ;;
    crun*) crun --root "$work/state/$name" "$@" ;;
  esac
}
cmd_of() { # the hyperfine command line of runtime NAME
  mkdir -p "$work/state/$1"
  case "$1" in
    flotilla) echo "$idexec $flot --root $work/state/flotilla run --bundle $b @ID@" ;;
    runc) echo "$idexec runc --root $work/state/runc run --bundle $b @ID@" ;;
    crun) echo "$idexec crun --root $work/state/crun run --bundle $b @ID@" ;;
    floor) echo "$idexec unshare -m -u -i -n -p -f --mount-proc chroot $b/rootfs /bin/true" ;;
    wrapper) echo "$idexec /bin/true" ;;
  esac
}
# check NAME: one run of the benchmarked command; prints the error (one line) on failure.
check() {
  local out
  # shellcheck disable=SC2046
  if out=$($(cmd_of "$1") 2>&1); then return 0; fi
  printf '%s' "$out" | tr '\n' ' ' | cut -c1-300
  return 1
}

declare -A status
for r in flotilla runc crun floor; do
  if err=$(check "$r"); then status[$r]=ok; else status[$r]="could not run: $err"; fi
  log "$r on the host's own layout: ${status[$r]}"
done
[ "${status[flotilla]}" = ok ] || { echo "runtime bench: flotilla-runtime ${status[flotilla]}" >&2; exit 1; }

layout_desc() {
  local v2c; v2c=$(cat "$CG/unified/cgroup.controllers" 2>/dev/null || true)
  if [ "$(stat -f -c %T "$CG")" = cgroup2fs ]; then echo "cgroup v2 only"; return; fi
  printf 'hybrid: v1 %s; cgroup2 at %s/unified with controllers [%s]' \
    "$(findmnt -rn -t cgroup -o TARGET | xargs -n1 basename | grep -v systemd | tr '\n' ' ' | sed 's/ $//')" "$CG" "$v2c"
}

# table JSON: markdown rows from hyperfine's export, with ratios to runc and crun when present.
table() {
  echo "| command | median (ms) | mean ± σ (ms) | min (ms) | failed runs | × runc | × crun |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  jq -r '
    def r2: (. * 100 | round) / 100 | tostring;
    def ms: . * 1000 | r2;
    (.results | map({key: .command, value: .median}) | from_entries) as $m
    | .results[]
    | "| \(.command) | \(.median | ms) | \(.mean | ms) ± \(.stddev | ms) | \(.min | ms) | "
      + "\([.exit_codes[] | select(. != 0)] | length)/\(.exit_codes | length) | "
      + (if $m.runc then (.median / $m.runc | r2) else "—" end) + " | "
      + (if $m.crun then (.median / $m.crun | r2) else "—" end) + " |"' "$1"
}
verdict() { # JSON: the two targets
  jq -r '
    def r2: (. * 1000 | round) / 1000 | tostring;
    (.results | map({key: .command, value: .median}) | from_entries) as $m
    | (if $m.runc then "- target flotilla ≤ 0.5× runc: \($m.flotilla / $m.runc | r2)× → "
         + (if $m.flotilla <= 0.5 * $m.runc then "**met**" else "**not met**" end)
       else "- target flotilla ≤ 0.5× runc: runc not measured" end),
      (if $m.crun then "- target flotilla ≤ 1.0× crun: \($m.flotilla / $m.crun | r2)× → "
         + (if $m.flotilla <= $m.crun then "**met**" else "**not met**" end)
       else "- target flotilla ≤ 1.0× crun: crun not measured here" end)' "$1"
}

# measure JSON NAME...: one hyperfine invocation over the named commands.
# With SPACED=1: $RUNS_SPACED runs, each after an untimed idle gap of $GAP_S seconds.
measure() {
  local json=$1; shift
  local args=() n runs=$RUNS what="back to back"
  for n in "$@"; do args+=(-n "$n" "$(cmd_of "$n")"); done
  if [ "${SPACED:-0}" = 1 ]; then
    args=(--prepare "sleep $GAP_S" "${args[@]}"); runs=$RUNS_SPACED; what="${GAP_S}s apart"
  fi
  wait_quiet
  log "measuring $* (load $(load1)), $what: $WARMUP warm-up + $runs runs each"
  hyperfine -N -i --style basic --warmup "$WARMUP" --runs "$runs" --export-json "$json" "${args[@]}" >&2
}

report=$work/report.md
{
  echo "## Container start-up: \`run\` of a busybox bundle executing /bin/true"
  echo
  echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")."
  echo "Versions: $("$flot" --version), runc $(runc --version | awk 'NR==1{print $3}'), crun $(crun --version | awk 'NR==1{print $3}'), hyperfine $(hyperfine --version | awk '{print $2}')."
  echo "Method: hyperfine -N, $WARMUP warm-up + $RUNS runs per command; state roots and bundle on tmpfs; a new container id per run."
  echo "All runtimes read the same config.json (\`flotilla-runtime spec -- /bin/true\`: pid, net, ipc, uts, mount, cgroup namespaces, no cgroupsPath, no seccomp)."
  for r in runc crun; do
    case "${status[$r]}" in
      ok) echo "$r accepted it unchanged." ;;
      *hybrid*) echo "$r accepted it unchanged; it refused the host's cgroup layout (below), not the config." ;;
      *) echo "$r ${status[$r]}" ;;
    esac
  done
} > "$report"

# --- Phase A: the host's own cgroup layout -------------------------------------------------------
names=(flotilla runc)
[ "${status[crun]}" = ok ] && names+=(crun)
[ "${status[runc]}" = ok ] || names=(flotilla)
names+=(floor wrapper)
measure "$work/host.json" "${names[@]}"
{
  echo
  echo "### Host layout as found — $(layout_desc)"
  echo
  [ "${status[runc]}" = ok ] || echo "runc ${status[runc]}"
  [ "${status[crun]}" = ok ] || { echo "crun ${status[crun]}"; echo; }
  table "$work/host.json"
  echo
  verdict "$work/host.json"
} >> "$report"
final_names=("${names[@]}")

# --- Phase B: hugetlb bound to v1 so that crun runs ----------------------------------------------
crun_note=""
if [ "${status[crun]}" != ok ] && [ "$(stat -f -c %T "$CG")" != cgroup2fs ]; then
  if ! mountpoint -q "$HUGETLB"; then
    [ -d "$HUGETLB" ] || { mkdir -p "$HUGETLB"; hugetlb_dir_made=1; }
    mount -t cgroup -o hugetlb cgroup "$HUGETLB" && hugetlb_mounted=1
    log "bound hugetlb to cgroup v1 at $HUGETLB for crun"
  fi
  if err=$(check crun); then
    status[crun]=ok
    names=(flotilla)
    [ "${status[runc]}" = ok ] && names+=(runc)
    names+=(crun floor wrapper)
    measure "$work/hugetlb.json" "${names[@]}"
    {
      echo
      echo "### hugetlb bound to cgroup v1 (so that crun runs) — $(layout_desc)"
      echo
      table "$work/hugetlb.json"
      echo
      verdict "$work/hugetlb.json"
    } >> "$report"
    final_names=("${names[@]}")
  else
    crun_note="crun could not run: $err"
    printf '\n%s\n' "$crun_note" >> "$report"
  fi
fi
# The same side by side, with an idle gap before every run (untimed), as when containers start
# now and then rather than in a tight loop: the kernel then makes every cgroup.procs write wait
# for an RCU grace period (percpu_down_write -> rcu_sync_enter -> synchronize_rcu), which a
# back-to-back loop mostly skips.
SPACED=1 measure "$work/spaced.json" "${final_names[@]}"
{
  echo
  echo "### Same commands, started ${GAP_S}s apart ($RUNS_SPACED runs each; the gap is a --prepare sleep, not timed)"
  echo
  table "$work/spaced.json"
  echo
  verdict "$work/spaced.json"
} >> "$report"
{
  echo
  echo "Rows: \`floor\` = \`unshare -m -u -i -n -p -f --mount-proc chroot rootfs /bin/true\` (namespaces, no cgroups,"
  echo "no pivot_root, no /dev, no capabilities); \`wrapper\` = the id wrapper exec'ing /bin/true, a cost every row includes."
} >> "$report"

# --- Lowest memory limit -------------------------------------------------------------------------
bm="$work/bundle-mem"
mkdir -p "$bm"
cp -a "$b/rootfs" "$bm/rootfs" # runc refuses a symlinked rootfs
mem_seq=0
declare -A mem_err
# mem_ok NAME LIMIT: 3 of 3 runs with linux.resources.memory.limit=LIMIT exit 0.
mem_ok() {
  local k id out rc
  jq --argjson l "$2" '.linux.resources.memory = {limit: $l}' "$b/config.json" > "$bm/config.json"
  for k in 1 2 3; do
    mem_seq=$((mem_seq + 1)); id="fbenchmem$mem_seq"
    out=$(rt "$1-mem" run --bundle "$bm" "$id" 2>&1) && rc=0 || rc=$?
    if [ "$rc" != 0 ]; then
      mem_err[$1]="exit $rc: $(printf '%s' "${out:-(no message)}" | tr '\n' ' ' | cut -c1-320)"
      rt "$1-mem" delete --force "$id" >/dev/null 2>&1 || true
      return 1
    fi
  done
}
page=$(getconf PAGESIZE)
mem_rows=()
mem_names=(flotilla)
[ "${status[runc]}" = ok ] && mem_names+=(runc)
[ "${status[crun]}" = ok ] && mem_names+=(crun)
for r in "${mem_names[@]}"; do
  lo=0 hi=$(( (64 << 20) / page ))   # in pages; 0 is never tried: it means "no limit" in OCI
  log "bisecting the lowest memory limit for $r"
  if ! mem_ok "$r" $((hi * page)); then
    mem_rows+=("| $r | > 64 MiB | ${mem_err[$r]} |"); continue
  fi
  while ((hi - lo > 1)); do
    mid=$(( (lo + hi) / 2 ))
    if mem_ok "$r" $((mid * page)); then hi=$mid; else lo=$mid; fi
  done
  if ((lo > 0)); then mem_ok "$r" $((lo * page)) || true; else mem_err[$r]=""; fi
  mem_rows+=("| $r | $((hi * page)) ($(awk -v b=$((hi * page)) 'BEGIN{printf "%.2f MiB", b/1048576}')) | $((lo * page)): ${mem_err[$r]:-n/a} |")
done
mem_left_state=$(find "$work/state" -mindepth 2 -maxdepth 2 -name 'fbenchmem*' | wc -l)
mem_left_cg=$(find "$CG" -mindepth 2 -maxdepth 6 -type d -name 'fbenchmem*' | wc -l)
# The kernel's own floor: cgroup v1 memory.limit_in_bytes on an empty cgroup, then below usage.
kmin=""
if [ -d "$CG/memory" ] && [ "$(stat -f -c %T "$CG")" != cgroup2fs ]; then
  kd="$CG/memory/fbenchkmin$$"
  mkdir "$kd"
  echo 1 > "$kd/memory.limit_in_bytes"; k1=$(cat "$kd/memory.limit_in_bytes")
  echo "$page" > "$kd/memory.limit_in_bytes"; k2=$(cat "$kd/memory.limit_in_bytes")
  echo -1 > "$kd/memory.limit_in_bytes"
  sh -c "echo \$\$ > $kd/cgroup.procs; exec sleep 2" & kp=$!
  sleep 0.3
  kusage=$(cat "$kd/memory.usage_in_bytes")
  if echo "$page" > "$kd/memory.limit_in_bytes" 2>/dev/null; then kbusy="accepted"; else kbusy="refused (EBUSY)"; fi
  kill "$kp" 2>/dev/null; wait "$kp" 2>/dev/null || true
  kp=""
  rmdir "$kd" 2>/dev/null || { sleep 0.5; rmdir "$kd"; }
  kmin="Kernel (cgroup v1 memory.limit_in_bytes): on an empty cgroup any value is accepted and rounded down to the $page-byte page (1 → $k1, $page → $k2), so the kernel's floor is one page; with a process inside (usage $kusage bytes) a limit of $page is $kbusy: a limit can only be lowered to what is already charged. OCI's 0 means \"no limit\", so the smallest meaningful limit is one page."
fi
{
  echo
  echo "## Lowest memory limit that still runs /bin/true"
  echo
  echo "Bisection of \`linux.resources.memory.limit\` in ${page}-byte steps between 0 and 64 MiB; a limit passes when 3 of 3 runs exit 0."
  echo
  echo "| runtime | lowest passing limit (bytes) | one page lower: error |"
  echo "|---|---:|---|"
  printf '%s\n' "${mem_rows[@]}"
  echo
  echo "$kmin"
  echo "Left behind by the failed runs: $mem_left_state state dirs, $mem_left_cg cgroup dirs."
} >> "$report"

# --- Back to the host's layout for the endurance loop --------------------------------------------
undo_hugetlb || true

# --- Endurance: LOOP sequential runs ---------------------------------------------------------------
log "$LOOP sequential flotilla-runtime runs"
fails=0
: > "$work/loop.err"
t0=$EPOCHREALTIME
for i in $(seq "$LOOP"); do
  rt flotilla-loop run --bundle "$b" "fbenchloop$i" >/dev/null 2>>"$work/loop.err" || fails=$((fails + 1))
done
t1=$EPOCHREALTIME
left_state=$(find "$work/state/flotilla-loop" -mindepth 1 -maxdepth 1 | wc -l)
left_cg=$(find "$CG" -mindepth 2 -maxdepth 6 -type d -name 'fbenchloop*' | wc -l)
{
  echo
  echo "## $LOOP sequential \`flotilla-runtime run\` ($(layout_desc))"
  echo
  echo "| non-zero exits (target 0) | state dirs left | cgroup dirs left | wall time | per run |"
  echo "|---:|---:|---:|---:|---:|"
  awk -v a="$t0" -v b="$t1" -v n="$LOOP" -v f="$fails" -v s="$left_state" -v c="$left_cg" \
    'BEGIN{printf "| %d | %d | %d | %.1f s | %.1f ms |\n", f, s, c, b-a, (b-a)*1000/n}'
  if [ -s "$work/loop.err" ]; then
    echo; echo "First errors:"; echo '```'; sort "$work/loop.err" | uniq -c | sort -rn | head -5; echo '```'
  fi
  echo
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} >> "$report"

if [ -n "${BENCH_OUT:-}" ]; then mkdir -p "$BENCH_OUT"; cp "$work"/*.json "$report" "$BENCH_OUT/"; fi
cat "$report"
