#!/usr/bin/env bash
# The main job on the embedded default (no cloud account): build flotilla, start a local OCI
# registry on 127.0.0.1, build and push a busybox image, pull it with flotilla's image store and
# run a container from it with flotilla-runtime. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
cargo build --release --bins -q
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/flotilla-quickstart.XXXXXX)
reg_pid=""
cleanup() {
  set +e
  "$bin/flotilla-runtime" --root "$work/run" delete --force quickstart >/dev/null 2>&1 || true
  "$bin/flotilla-agent" --root "$work/images" bundle rm --id quickstart >/dev/null 2>&1 || true
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null; wait "$reg_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. A registry of our own on a free loopback port.
port=$(comm -23 <(seq 20000 40000 | sort) <(ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u) | shuf -n 1)
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: $(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
log: {level: error}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.05; done

# 2. A busybox image built offline from Debian's busybox-static, imported and pushed by flotilla.
mkdir -p "$work/rootfs"/{bin,etc,proc,sys,dev,tmp,root}
cp /bin/busybox "$work/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
img="127.0.0.1:$port/busybox:latest"
"$bin/flotilla-agent" --root "$work/images" image import "$work/rootfs.tar" "$img" --change 'CMD ["/bin/sh"]' >/dev/null
"$bin/flotilla-agent" --root "$work/images" image push "$img"
"$bin/flotilla-agent" --root "$work/images" image rm "$img" >/dev/null
"$bin/flotilla-agent" --root "$work/images" image gc >/dev/null

# 3. Pull it back from the registry, make a bundle on an overlay rootfs, run it.
"$bin/flotilla-agent" --root "$work/images" image pull "$img"
"$bin/flotilla-agent" --root "$work/images" bundle create "$img" --id quickstart --bundle "$work/bundle" \
  -- sh -c 'echo "hello from a flotilla container: pid $$, hostname $(hostname), network: $(ls /sys/class/net)"'
"$bin/flotilla-runtime" --root "$work/run" run --bundle "$work/bundle" quickstart
