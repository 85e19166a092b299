#!/usr/bin/env bash
# The main job on the embedded default (no cloud account), on this host as one flotilla node:
# build flotilla, start a local OCI registry on 127.0.0.1 and push a busybox image built offline,
# start the node agent (`flotilla-agent serve`), and use the `flotilla` CLI like docker: pull,
# create a bridge network, run a web server with a published port, reach it by name from another
# container and from the host, read logs, exec, stop and remove. Everything it starts is stopped
# and removed on exit; it uses its own state dirs, bridge, subnets and nftables table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
cargo build --release --bins -q
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/flotilla-quickstart.XXXXXX)
reg_pid="" agent_pid=""
export FLOTILLA_HOST="unix://$work/run/agent.sock"
flotilla() { "$bin/flotilla" "$@"; }
cleanup() {
  set +e
  if [ -n "$agent_pid" ]; then
    flotilla rm -f $(flotilla ps -aq) >/dev/null 2>&1
    flotilla network rm qs-net >/dev/null 2>&1
    kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null
  fi
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null; wait "$reg_pid" 2>/dev/null; fi
  nft delete table ip flqs 2>/dev/null
  ip link del flqs0 2>/dev/null
  grep -o "$work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { comm -23 <(seq 20000 40000 | sort) <(ss -Htan | awk '{n=split($4,a,":"); print a[n]}' | sort -u) | shuf -n 1; }

echo "== a registry of our own on a free loopback port"
port=$(free_port)
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

echo "== the node agent"
"$bin/flotilla-agent" serve --state-dir "$work/state" --run-dir "$work/run" \
  --bridge-name flqs0 --bridge-subnet 10.231.0.0/24 --network-pool 10.232.0.0/16 \
  --bridge-prefix flqs- --nft-table flqs >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do [ -S "$work/run/agent.sock" ] && break; sleep 0.05; done
flotilla version

echo "== a busybox image built offline, imported and pushed by flotilla, then pulled back"
mkdir -p "$work/rootfs"/{bin,etc,proc,sys,dev,tmp,root,www}
cp /bin/busybox "$work/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
echo 'hello from a flotilla container' > "$work/rootfs/www/index.html"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
img="127.0.0.1:$port/busybox:latest"
flotilla image import "$work/rootfs.tar" "$img" -c 'CMD ["/bin/sh"]' -c 'EXPOSE 80' >/dev/null
flotilla push "$img"
flotilla rmi "$img" >/dev/null
flotilla pull "$img"

echo "== containers"
flotilla run --rm "$img" sh -c 'echo "pid $$, hostname $(hostname), interfaces: $(ls /sys/class/net | tr "\n" " ")"'
flotilla network create qs-net >/dev/null
hp=$(free_port)
flotilla run -d --name web --network qs-net -p "127.0.0.1:$hp:80" --restart unless-stopped \
  --health-cmd 'wget -q -O /dev/null http://127.0.0.1/' --health-interval 1s "$img" httpd -f -v -p 80 -h /www >/dev/null
echo "-- from another container, by name:"
flotilla run --rm --network qs-net "$img" wget -q -O - http://web/
echo "-- from the host, through the published port 127.0.0.1:$hp:"
curl -s "http://127.0.0.1:$hp/"
flotilla exec web sh -c 'echo "exec in web: $(ps | wc -l) processes"'
sleep 1.5
flotilla ps
echo "-- logs:"
flotilla logs --tail 3 web
flotilla stop -t 2 web >/dev/null
flotilla ps -a
echo "quickstart: ok"
