#!/usr/bin/env bash
# The main job on the embedded default (no cloud account), on this host as one flotilla node:
# build flotilla, start a local OCI registry on 127.0.0.1 and push a busybox image built offline,
# start the node agent (`flotilla-agent serve`), and use the `flotilla` CLI like docker: pull,
# create a bridge network, run a web server with a published port, reach it by name from another
# container and from the host, read logs, exec, stop and remove. Everything it starts is stopped
# and removed on exit; it uses its own state dirs, bridge, subnets and nftables table.
# Then the same as a cluster of three local lab machines (network namespaces with their own
# addresses and hostnames): a manager (`flotilla-controller init`), two workers joined with the
# worker token, a replicated service spread over them, a worker lost and its tasks rescheduled.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
cargo build --release --bins -q
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/flotilla-quickstart.XXXXXX)
reg_pid="" agent_pid="" lab_pids=""
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
  for h in 2 3; do
    [ -S "$work/h$h/run/agent.sock" ] && FLOTILLA_HOST="unix://$work/h$h/run/agent.sock" \
      "$bin/flotilla" rm -f $(FLOTILLA_HOST="unix://$work/h$h/run/agent.sock" "$bin/flotilla" ps -aq 2>/dev/null) >/dev/null 2>&1
  done
  for p in $lab_pids; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  pkill -9 -f "$work/" 2>/dev/null
  for r in "$work"/h*/run/runtime; do
    [ -d "$r" ] || continue
    for c in "$r"/*/; do [ -d "$c" ] && "$bin/flotilla-runtime" --root "$r" delete --force "$(basename "$c")" >/dev/null 2>&1; done
  done
  for ns in flqs-h1 flqs-h2 flqs-h3 flqs-hub; do ip netns del "$ns" 2>/dev/null; done
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

echo "== a cluster of three local lab machines: flqs-h1 (manager), flqs-h2 and flqs-h3 (workers)"
ip netns add flqs-hub
ip -n flqs-hub link add br0 type bridge
ip -n flqs-hub link set br0 up
for h in 1 2 3; do
  ip netns add "flqs-h$h"
  ip -n flqs-hub link add "h$h" type veth peer name eth0 netns "flqs-h$h"
  ip -n flqs-hub link set "h$h" master br0 up
  ip -n "flqs-h$h" addr add "10.233.0.$h/24" dev eth0
  ip -n "flqs-h$h" link set eth0 up
  ip -n "flqs-h$h" link set lo up
done
# on_host N CMD...: CMD on lab machine N (its network namespace and its own hostname)
on_host() { local h=$1; shift; unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "flqs-h$h" nsenter --net="/run/netns/flqs-h$h" -- "$@"; }
export FLOTILLA_CONFIG="$work/cli"
cluster() { on_host 1 "$bin/flotilla" "$@"; }
on_host 1 "$bin/flotilla-controller" init --listen 10.233.0.1:4242 --state-dir "$work/h1/controller" \
  --config-dir "$work/cli" >"$work/h1.log" 2>&1 &
lab_pids="$lab_pids $!"
for _ in $(seq 200); do grep -q "flotilla-agent serve --join" "$work/h1.log" && break; sleep 0.05; done
sed -n '/^Cluster/,/^The .flotilla. CLI/p' "$work/h1.log"
token=$(grep -o 'flotilla-agent serve --join [^ ]* --token [^ ]*' "$work/h1.log" | awk '{print $NF}')
for h in 2 3; do
  on_host "$h" "$bin/flotilla-agent" serve --state-dir "$work/h$h/state" --run-dir "$work/h$h/run" \
    --join 10.233.0.1:4242 --token "$token" >"$work/h$h.log" 2>&1 &
  lab_pids="$lab_pids $!"
  for _ in $(seq 200); do [ -S "$work/h$h/run/agent.sock" ] && break; sleep 0.05; done
  # the lab machines have no route to the registry on this host's loopback: load the image directly
  FLOTILLA_HOST="unix://$work/h$h/run/agent.sock" "$bin/flotilla" image import "$work/rootfs.tar" busybox:latest \
    -c 'CMD ["/bin/sh"]' >/dev/null
done
# wait_for WHAT TENTHS CMD...: retries CMD every 0.1 s, fails the quickstart after TENTHS tries.
wait_for() { local what=$1 n=$2; shift 2; for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done; echo "quickstart: timed out waiting for $what" >&2; return 1; }
workers_ready() { [ "$(cluster node ls --format '{{.Status}}' | grep -c Ready)" = 2 ]; }
wait_for "both workers to be ready" 300 workers_ready
cluster node ls
cluster service create --name hello --replicas 4 --health-cmd 'wget -q -O /dev/null http://127.0.0.1/' \
  busybox:latest httpd -f -p 80 -h /www
cluster service ps hello
echo "-- flqs-h3 is lost (its agent killed, its link cut); its tasks move to flqs-h2:"
kill -9 "$(pgrep -f "serve --state-dir $work/h3/state" | head -1)"
ip -n flqs-hub link set h3 down
all_on_h2() { [ "$(cluster service ps hello --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' | grep -c '^flqs-h2 Running')" = 4 ]; }
wait_for "the 4 tasks to run on flqs-h2" 300 all_on_h2
cluster node ls
cluster service ps hello
echo "-- flqs-h3 comes back: the copies it still runs are stopped (the service keeps 4 tasks)"
ip -n flqs-hub link set h3 up
on_host 3 "$bin/flotilla-agent" serve --state-dir "$work/h3/state" --run-dir "$work/h3/run" >>"$work/h3.log" 2>&1 &
lab_pids="$lab_pids $!"
h3() { FLOTILLA_HOST="unix://$work/h3/run/agent.sock" "$bin/flotilla" "$@"; }
h3_clean() { h3 version >/dev/null 2>&1 && [ "$(h3 ps -q 2>/dev/null | wc -l)" = 0 ]; }
wait_for "flqs-h3 to stop its stale copies" 300 h3_clean
echo "containers still running on flqs-h3: $(h3 ps -q | wc -l)"
cluster service rm hello >/dev/null
echo "quickstart: ok"
