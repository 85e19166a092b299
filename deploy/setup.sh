#!/usr/bin/env bash
# Installs what flotilla's build, tests and quickstart need on Debian 12, idempotently:
# packages already present are not reinstalled and `apt-get update` runs only when something is missing.
set -euo pipefail
pkgs=(docker-registry skopeo umoci busybox-static runc crun openssh-server iptables nftables iproute2
      iperf3 hyperfine jq libseccomp-dev pkg-config apache2-utils golang-github-docker-docker-dev
      strace psmisc procps util-linux curl ca-certificates python3 protobuf-compiler)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing: install the Rust toolchain (rustup)" >&2; exit 1; }
