# Shared shell helpers for deploy/ and deploy/bench/ scripts. Source it:
#   . "$(dirname "$0")/../lib.sh"      # from deploy/bench/
# Nothing here runs on its own; every helper only touches the paths it is given.

# busybox_rootfs DIR: a minimal root filesystem in DIR from the host's busybox-static:
# /bin/busybox, one symlink per applet, /etc/passwd and /etc/group with root, /tmp (1777) and the
# empty mount points /proc /sys /dev /root. Needs /bin/busybox (package busybox-static).
busybox_rootfs() {
  local r=$1 a
  [ -x /bin/busybox ] || { echo "busybox_rootfs: /bin/busybox is missing (apt-get install busybox-static)" >&2; return 1; }
  mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root}
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
  echo 'root:x:0:' > "$r/etc/group"
}

# busybox_tar FILE: the busybox_rootfs as an uncompressed tarball (numeric root owner, sorted
# entries, fixed mtime: the same input gives the same bytes), e.g. for `docker import` and
# `flotilla image import`.
busybox_tar() {
  local out=$1 d
  d=$(mktemp -d "${TMPDIR:-/tmp}/busybox-rootfs.XXXXXX")
  busybox_rootfs "$d" || { rm -rf "$d"; return 1; }
  tar -C "$d" --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -cf "$out" . || { rm -rf "$d"; return 1; }
  rm -rf "$d"
}

# The PATH docker sets in containers whose image has none; images built here carry it explicitly.
BUSYBOX_PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
