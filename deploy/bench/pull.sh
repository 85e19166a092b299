#!/usr/bin/env bash
# Image pull benchmark (issue 2): `flotilla-agent image pull` vs `skopeo copy` from a private
# registry on 127.0.0.1, for a small image (busybox) and a ~100 MB image of 5 layers, in one run.
#
#   sudo deploy/bench/pull.sh > pull.md     # markdown report on stdout, progress on stderr
#
# What it does:
#   1. installs packages (deploy/setup.sh) and builds flotilla's release binaries;
#   2. starts docker-registry (distribution 2.8) on a free 127.0.0.1 port with its own config;
#   3. builds two OCI layouts with umoci, no network: busybox (busybox-static + applet symlinks) and
#      "big": 5 layers of 20 MiB each (one 16 MiB file + 256 files of 16 KiB, all from
#      /dev/urandom, so gzip cannot shrink them); pushes both with skopeo;
#   4. times, with hyperfine -N, into a fresh destination every run (so each run really downloads;
#      the previous destination is renamed aside, untimed, and deleted only at exit, because
#      deleting ~1,300 files right before a run makes ext4's inode allocator dominate it):
#      `flotilla-agent --root <fresh> image pull` (downloads, verifies, unpacks every layer into
#      its store, fsyncs) vs `skopeo copy docker://… oci:<fresh>` (downloads and verifies, does NOT
#      unpack, does not sync), `skopeo copy; sync` (its durable equivalent) and, as a transfer
#      floor, curl fetching the same blobs to /dev/null. Each image runs in $ROUNDS interleaved
#      rounds whose runs are merged, so a busy spell of a shared machine hits every client alike;
#      the big image is measured once more with every destination on a tmpfs;
#   5. separates flotilla's download phase from the progress lines it prints on stderr ("<layer>:
#      downloaded"), time-stamped as they arrive: time to the last layer downloaded, and the rest;
#   6. measures flotilla-agent's fixed per-process cost of parsing an image reference.
#   Needs 12 GiB free under BENCH_TMP (the renamed-aside destinations).
# Environment: RUNS_SMALL (30), RUNS_BIG (15), split in ROUNDS (3) hyperfine calls per
# image (merged), WARMUP (2, per round), MAX_LOAD (1.5: waits up to WAIT_S=300 s
# for the 1-minute load average to drop below it), BENCH_OUT (directory to keep hyperfine's JSON),
# BENCH_TMP (parent of the work directory, default /var/tmp: a disk, like a real image store).
# Everything it starts is stopped and removed on exit, also on failure. Traffic: 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "pull bench: run as root" >&2; exit 1; }
RUNS_SMALL=${RUNS_SMALL:-30} RUNS_BIG=${RUNS_BIG:-15} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3}
MAX_LOAD=${MAX_LOAD:-1.5} WAIT_S=${WAIT_S:-300}

log() { printf '[pull bench] %s\n' "$*" >&2; }

deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
log "building release binaries"
cargo build --release --bins -q
agent="$CARGO_TARGET_DIR/release/flotilla-agent"

work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/flotilla-bench-pull.XXXXXX")
reg_pid="" tmpfs_mounted=0
cleanup() {
  set +e
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null; wait "$reg_pid" 2>/dev/null; fi
  [ "$tmpfs_mounted" = 1 ] && umount "$work/tmpfs"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_kb=$(df -Pk "$work" | awk 'NR==2 {print $4}')
((free_kb > 12 * 1024 * 1024)) || { echo "pull bench: needs 12 GiB free under $(dirname "$work")" >&2; exit 1; }

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN{exit !(l > m)}'; do
    if ((waited >= WAIT_S)); then log "WARNING: load $(load1) is still above $MAX_LOAD: measuring anyway"; return; fi
    ((waited == 0)) && log "load average $(load1) > $MAX_LOAD: waiting (up to ${WAIT_S}s)"
    sleep 10; waited=$((waited + 10))
  done
}

# --- Registry ------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: $(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
log: {level: error}
YML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$work/registry.log" >&2; echo "pull bench: registry did not start" >&2; exit 1; }
reg="127.0.0.1:$port"
log "registry on $reg"

# --- Images --------------------------------------------------------------------------------------
L="$work/layout"
umoci init --layout "$L"
# busybox
umoci new --image "$L:bb"
umoci unpack --image "$L:bb" "$work/bb" >/dev/null
r="$work/bb/rootfs"
mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root}
chmod 1777 "$r/tmp"
cp /bin/busybox "$r/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"
umoci repack --image "$L:bb" "$work/bb"
umoci config --image "$L:bb" --tag busybox --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --architecture amd64 --os linux
rm -rf "$work/bb"
# big: 5 layers of 20 MiB of random data
log "building the 5-layer image"
umoci new --image "$L:bigbase"
for i in 1 2 3 4 5; do
  d="$work/layer$i/data/layer$i"
  mkdir -p "$d/small"
  head -c 16M /dev/urandom > "$d/big.bin"
  head -c 4M /dev/urandom | split -b 16k -a 3 - "$d/small/f"
  tar -C "$work/layer$i" -cf "$work/layer$i.tar" data
  umoci raw add-layer --image "$L:bigbase" "$work/layer$i.tar"
  rm -rf "$work/layer$i" "$work/layer$i.tar"
done
umoci config --image "$L:bigbase" --tag big --config.cmd /bin/true --architecture amd64 --os linux
skopeo copy -q --dest-tls-verify=false "oci:$L:busybox" "docker://$reg/busybox:latest"
skopeo copy -q --dest-tls-verify=false "oci:$L:big" "docker://$reg/big:latest"
rm -rf "$L"

# blob_digests NAME: the config and layer digests of NAME:latest, as the registry serves them.
accept='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'
manifest() { curl -sf -H "Accept: $accept" "http://$reg/v2/$1/manifests/latest"; }
# A transfer floor: the manifest and every blob, one after another, to /dev/null.
cat > "$work/curl-all.sh" <<SH
#!/bin/sh
set -e
name=\$1
m=\$(curl -sf -H "Accept: $accept" "http://$reg/v2/\$name/manifests/latest")
for d in \$(printf '%s' "\$m" | jq -r '.config.digest, .layers[].digest'); do
  curl -sf -o /dev/null "http://$reg/v2/\$name/blobs/\$d"
done
SH
chmod +x "$work/curl-all.sh"

# --- Check each command once -------------------------------------------------------------------------
"$agent" --root "$work/check" image pull -q "$reg/big:latest" >/dev/null
"$agent" --root "$work/check" image ls >&2
skopeo copy -q --src-tls-verify=false "docker://$reg/big:latest" "oci:$work/check-skopeo:x"
"$work/curl-all.sh" big
size_of() { du -sb "$1" | cut -f1; }
human() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
declare -A compressed stored_f stored_s
for n in busybox big; do
  compressed[$n]=$(manifest "$n" | jq '[.config.size, .layers[].size] | add')
done
stored_f[big]=$(size_of "$work/check"); stored_s[big]=$(size_of "$work/check-skopeo")
mkdir -p "$work/old"
mv "$work/check" "$work/check-skopeo" "$work/old/" # not deleted before the end: see below

# --- Measurements --------------------------------------------------------------------------------
# Destinations are never deleted between runs on the disk: the previous one is renamed aside and
# everything is removed at exit. Deleting ~1,300 files before each run made ext4's inode allocator
# (recently_deleted/find_inode_bit, visible with perf) dominate the next runs' file creations.
mkdir -p "$work/old"
tmpfs="$work/tmpfs"
mkdir -p "$tmpfs"
mount -t tmpfs -o size=3g,mode=0700 flotilla-bench-pull "$tmpfs" && tmpfs_mounted=1
# aside DEST: hyperfine's --prepare for a destination: removed on tmpfs, renamed aside on disk.
aside() {
  case "$1" in
    "$tmpfs"/*) echo "sh -c 'rm -rf $1'" ;;
    *) echo "sh -c '[ ! -e $1 ] || mv $1 $work/old/\$(date +%s%N); sync'" ;;
  esac
}
# merge JSON...: one hyperfine export from several (the same commands in the same order).
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
# measure NAME RUNS JSON DEST_DIR: hyperfine over the clients, in $ROUNDS rounds (so that a slow
# spell of the shared machine hits every client alike), merged into JSON.
measure() {
  local n=$1 runs=$2 json=$3 dir=$4 round per extra=()
  local dest_f="$dir/store" dest_s="$dir/oci"
  mkdir -p "$dir"
  per=$(( (runs + ROUNDS - 1) / ROUNDS ))
  if [ "$dir" != "$tmpfs" ]; then
    extra=(--prepare "$(aside "$dest_s")" -n "skopeo copy; sync"
      "sh -c 'skopeo copy -q --src-tls-verify=false docker://$reg/$n:latest oci:$dest_s:x && sync'")
  fi
  for round in $(seq "$ROUNDS"); do
    wait_quiet
    log "measuring $n:latest into $dir, round $round/$ROUNDS (load $(load1)): $WARMUP warm-up + $per runs each"
    hyperfine -N -i --style basic --warmup "$WARMUP" --runs "$per" --export-json "$json.$round" \
      --prepare "$(aside "$dest_f")" -n "flotilla pull" \
        "$agent --root $dest_f image pull -q $reg/$n:latest" \
      --prepare "$(aside "$dest_s")" -n "skopeo copy" \
        "skopeo copy -q --src-tls-verify=false docker://$reg/$n:latest oci:$dest_s:x" \
      "${extra[@]}" \
      --prepare "sync" -n "curl blobs" \
        "$work/curl-all.sh $n" >&2
  done
  merge "$json".[0-9]* > "$json"
  rm -f "$json".[0-9]*
}
# phases NAME RUNS: flotilla's download phase, from its time-stamped progress lines.
# Prints "<median s to the last 'downloaded' line> <median s total>".
phases() {
  local n=$1 runs=$2 k t0 t1 dest
  : > "$work/phases.txt"
  for k in $(seq "$runs"); do
    dest="$work/old/phase-$n-$k"
    sync
    t0=$EPOCHREALTIME
    "$agent" --root "$dest" image pull "$reg/$n:latest" >/dev/null \
      2> >(while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done > "$work/progress.log")
    t1=$EPOCHREALTIME
    wait $! 2>/dev/null || true
    awk -v t0="$t0" -v t1="$t1" '/: downloaded$/ {d = $1} END {printf "%.4f %.4f\n", d - t0, t1 - t0}' \
      "$work/progress.log" >> "$work/phases.txt"
  done
  sort -n -k1 "$work/phases.txt" | awk '{a[NR]=$1} END {printf "%s ", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
  sort -n -k2 "$work/phases.txt" | awk '{a[NR]=$2} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

table() { # JSON
  echo "| command | unpacks layers | median (s) | mean ± σ (s) | min (s) | failed runs | × skopeo |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  jq -r '
    def r3: (. * 1000 | round) / 1000 | tostring;
    (.results | map({key: .command, value: .median}) | from_entries) as $m
    | .results[]
    | "| \(.command) | \(if .command == "flotilla pull" then "yes" else "no" end) | \(.median | r3) | "
      + "\(.mean | r3) ± \(.stddev | r3) | \(.min | r3) | "
      + "\([.exit_codes[] | select(. != 0)] | length)/\(.exit_codes | length) | "
      + (.median / $m["skopeo copy"] * 100 | round / 100 | tostring) + " |"' "$1"
}

report="$work/report.md"
{
  echo "## Image pull from a registry on 127.0.0.1"
  echo
  echo "Machine: $(nproc) CPUs, kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); work directory on $(findmnt -n -o FSTYPE -T "$work") ($(dirname "$work"))."
  echo "Versions: $("$agent" --version), skopeo $(skopeo --version | awk '{print $3}'), docker-registry (distribution) $(dpkg-query -W -f='${Version}' docker-registry), hyperfine $(hyperfine --version | awk '{print $2}')."
  echo "Method: hyperfine -N in $ROUNDS rounds per image ($WARMUP warm-up runs each), merged; before every run the previous destination is renamed aside (deleted only at the end) and \`sync\` flushes dirty data (not timed);"
  echo "the registry's blobs stay in the page cache, so this measures the clients, not the disk. flotilla downloads up to 3 layers at once, skopeo 1.9 up to 6."
  echo "flotilla returns once its blobs and layers are on disk (fsync, syncfs); skopeo returns with its data in the page cache: \`skopeo copy; sync\` is the durable equivalent."
} > "$report"
for n in busybox big; do
  runs=$RUNS_SMALL; [ "$n" = big ] && runs=$RUNS_BIG
  measure "$n" "$runs" "$work/$n.json" "$work/disk"
  wait_quiet
  log "flotilla's download phase for $n ($runs runs)"
  read -r dl total < <(phases "$n" "$runs")
  {
    echo
    if [ "$n" = big ]; then
      echo "### big: 5 layers × 20 MiB of random data, destination on $(findmnt -n -o FSTYPE -T "$work")"
      echo
      echo "$(human "${compressed[$n]}") compressed; flotilla's store after the pull: $(human "${stored_f[big]}") (blobs + unpacked layers); skopeo's OCI layout: $(human "${stored_s[big]}")."
    else
      echo "### busybox: 1 layer ($(human "${compressed[$n]}") compressed), destination on $(findmnt -n -o FSTYPE -T "$work")"
    fi
    echo
    table "$work/$n.json"
    echo
    awk -v d="$dl" -v t="$total" -v r="$runs" 'BEGIN {
      printf "flotilla pull split by its own progress lines (median of %d further runs, progress printed): last layer downloaded after %.3f s, pull done after %.3f s; %.3f s (%.0f%%) come after the last download (unpacking what is left, manifest, record). With 3 downloads at once and unpacking overlapping them, the first figure is an upper bound of the download time.\n", r, d, t, t - d, (t - d) * 100 / t }'
    echo
    jq -r '(.results | map({key: .command, value: .median}) | from_entries) as $m
      | "- target flotilla pull ≤ 1.0× skopeo copy: \($m["flotilla pull"] / $m["skopeo copy"] * 100 | round / 100)× → "
        + (if $m["flotilla pull"] <= $m["skopeo copy"] then "**met**" else "**not met**" end)' "$work/$n.json"
  } >> "$report"
done
# A fixed cost of every flotilla-agent process: parsing one image reference (no network, empty
# store: `image inspect` fails after the parse, `image ls` parses nothing).
wait_quiet
log "flotilla-agent's per-process cost of parsing a reference"
hyperfine -N -i --style basic --warmup 3 --runs 30 --export-json "$work/parse.json" \
  -n "image ls (empty store)" "$agent --root $work/empty image ls" \
  -n "image inspect REF (empty store)" "$agent --root $work/empty image inspect $reg/busybox:latest" >&2
jq -r '.results | "\nPer-process fixed cost: `flotilla-agent image ls` on an empty store \(.[0].median * 1000 | round) ms, `image inspect <ref>` on the same empty store (parses the reference, then fails) \(.[1].median * 1000 | round) ms: parsing one reference costs about \((.[1].median - .[0].median) * 1000 | round) ms of every pull."' \
  "$work/parse.json" >> "$report"
# The big image once more with both destinations on tmpfs: no disk, fsync and syncfs are free.
measure big "$RUNS_BIG" "$work/big-tmpfs.json" "$tmpfs"
{
  echo
  echo "### big again, destinations on tmpfs (no disk writes; fsync/syncfs cost nothing)"
  echo
  table "$work/big-tmpfs.json"
}  >> "$report"
echo >> "$report"
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)." >> "$report"

if [ -n "${BENCH_OUT:-}" ]; then mkdir -p "$BENCH_OUT"; cp "$work"/*.json "$report" "$BENCH_OUT/"; fi
cat "$report"
