#!/usr/bin/env bash
# A cluster lab on one machine: N separate "hosts", each a network + mount + PID + UTS namespace.
#
#   scripts/cluster_lab.sh up N          bring hosts 0..N-1 up (idempotent: live hosts are kept,
#                                        dead ones are cleaned and started again)
#   scripts/cluster_lab.sh down          stop every host; no interface, namespace, mount or
#                                        process is left behind
#   scripts/cluster_lab.sh status        one line per host
#   scripts/cluster_lab.sh exec I CMD..  run CMD inside host I (its network, mounts, processes)
#   scripts/cluster_lab.sh ip I          host I's address
#   scripts/cluster_lab.sh pid I         host I's first process (kill -9 it: a lost instance)
#   scripts/cluster_lab.sh image         give every live host a venv with the project's dependencies
#                                        and sudo (the "machine image" `ray up` expects)
#   scripts/cluster_lab.sh skew-env S    the environment that runs a host's wall clock S seconds
#                                        ahead (libfaketime; give it to `exec I env ... ray start`)
#
# Each host has its own IP on the bridge rdlab0 (10.213.7.0/24 unless RDLAB_NET says otherwise),
# its own hostname, its own /tmp, /dev/shm, HOME (/root) and local disk (/mnt/local), its own
# process table (so `ray stop` on one host touches no other), and sshd on its IP that accepts the
# key the lab generates ($RDLAB_DIR/ssh/id_ed25519). $RDLAB_DIR/shared is mounted on every host at
# /mnt/shared (the EFS of cluster.yaml), except on hosts listed in RDLAB_NO_SHARED ("1 2").
# No route leads out of the lab: only the lab's own addresses can be contacted. Needs root.
set -euo pipefail
LAB=${RDLAB_DIR:-/var/tmp/rdlab}
REPO=$(cd "$(dirname "$0")/.." && pwd)
NET=${RDLAB_NET:-10.213.7}
BR=rdlab0

die() { echo "cluster_lab: $*" >&2; exit 1; }
host_ip() { echo "$NET.$((10 + $1))"; }
ns_name() { echo "rdlab-h$1"; }
hdir() { echo "$LAB/hosts/h$1"; }

# the host's first process, if it still runs inside the host's own network namespace (a pid
# file alone could name a recycled pid)
pid1() {
  local p f
  f="$(hdir "$1")/pid"
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -e "/run/netns/$(ns_name "$1")" ] && [ -e "/proc/$p/ns/net" ] || return 1
  [ "$(stat -L -c %i "/proc/$p/ns/net")" = "$(stat -L -c %i "/run/netns/$(ns_name "$1")")" ] \
    || return 1
  echo "$p"
}

need() {
  [ "$(id -u)" = 0 ] || die "needs root (network and mount namespaces)"
  for t in ip unshare nsenter /usr/sbin/sshd ssh-keygen; do
    command -v "$t" >/dev/null || die "$t is missing: apt-get install iproute2 util-linux openssh-server"
  done
}

keys() {
  mkdir -p "$LAB/ssh" "$LAB/shared"
  [ -f "$LAB/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rdlab -f "$LAB/ssh/id_ed25519"
  [ -f "$LAB/ssh/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rdlab-host -f "$LAB/ssh/host_ed25519"
  cp "$LAB/ssh/id_ed25519.pub" "$LAB/ssh/authorized_keys"
  chmod 600 "$LAB/ssh/authorized_keys" "$LAB/ssh/host_ed25519" "$LAB/ssh/id_ed25519"
  cat > "$LAB/ssh/sshd_config" <<EOF
HostKey $LAB/ssh/host_ed25519
AuthorizedKeysFile $LAB/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
AcceptEnv LANG
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  # the client side: known host keys of the lab only, never the user's own files
  cat > "$LAB/ssh/config" <<EOF
Host $NET.*
  User root
  IdentityFile $LAB/ssh/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
}

# libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 (a host whose wall clock runs ahead,
# its monotonic clock true, as on a real host) fails every clock_nanosleep with EINVAL, so
# Python's time.sleep raises. Preloaded before libfaketime, this passes the call straight to the
# kernel: sleeps on the monotonic clock, which is not faked, are then exact.
sleep_fix() {
  [ -f "$LAB/lib/nanosleep_fix.so" ] && return 0
  command -v cc >/dev/null || return 0
  mkdir -p "$LAB/lib"
  cat > "$LAB/lib/nanosleep_fix.c" <<'CEOF'
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req, struct timespec *rem) {
  return syscall(SYS_clock_nanosleep, clock, flags, req, rem) == -1 ? errno : 0;
}
CEOF
  cc -shared -fPIC -O2 -o "$LAB/lib/nanosleep_fix.so" "$LAB/lib/nanosleep_fix.c"
}

# The hosts' "machine image" for `ray up` (what a DLAMI gives an AWS node): Python with the
# project's dependencies already installed (the lab has no route out, so pip must find them
# locally), pip told so, and `sudo` (the lab's hosts run as root and have none). Each host gets
# its own venv in its own HOME; the dependencies are the ones of the venv this script runs from.
image() {
  local i h py site
  py=$(readlink -f "${PYTHON:-.venv/bin/python}")
  site=$("${PYTHON:-.venv/bin/python}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for d in "$LAB"/hosts/h*; do
    i=${d##*/h}; h="$d/home"
    pid1 "$i" >/dev/null || continue
    if [ ! -x "$h/venv/bin/python" ]; then
      # made inside the host, so that its scripts name /root/venv as the host sees it
      nsenter -t "$(pid1 "$i")" -m -n -p -u -- "$py" -m venv /root/venv
      echo "$site" > "$(echo "$h"/venv/lib/python3*/site-packages)/rdlab_image.pth"
      printf '#!/bin/sh\nexec "$@"\n' > "$h/venv/bin/sudo"
      # the dependencies' console scripts live in the other venv's bin, bound to its python
      printf '#!/root/venv/bin/python\nfrom ray.scripts.scripts import main\nmain()\n' \
        > "$h/venv/bin/ray"
      chmod +x "$h/venv/bin/sudo" "$h/venv/bin/ray"
    fi
    mkdir -p "$h/.config/pip"
    printf '[global]\nno-index = true\n[install]\nno-build-isolation = false\n' \
      > "$h/.config/pip/pip.conf"
    cat > "$h/.bashrc" <<BEOF
export PATH=/root/venv/bin:\$PATH
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
BEOF
  done
}

bridge_up() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
  fi
  ip link set "$BR" up
}

# what a dead or half-made host leaves: its processes, namespace, veth
clean_host() {
  local i=$1 n p
  n=$(ns_name "$i")
  if [ -e "/run/netns/$n" ]; then
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do [ -z "$(ip netns pids "$n" 2>/dev/null)" ] && break; sleep 0.1; done
    ip netns del "$n" 2>/dev/null || true
  fi
  ip link del "rdlab-v$i" 2>/dev/null || true
  rm -f "$(hdir "$i")/pid" "$(hdir "$i")/ready"
}

start_host() {
  local i=$1 n ip h upid child shared=1
  n=$(ns_name "$i"); ip=$(host_ip "$i"); h=$(hdir "$i")
  for x in ${RDLAB_NO_SHARED:-}; do [ "$x" = "$i" ] && shared=0; done
  clean_host "$i"
  rm -rf "$h/tmp"  # a new instance: nothing of the last one's /tmp survives
  mkdir -p "$h/tmp" "$h/home/.pyenv" "$h/local"
  chmod 1777 "$h/tmp"
  ip netns add "$n"
  ip link add "rdlab-v$i" type veth peer name eth0 netns "$n"
  ip link set "rdlab-v$i" master "$BR" up
  ip -n "$n" addr add "$ip/24" dev eth0
  ip -n "$n" link set lo up
  ip -n "$n" link set eth0 up
  mkdir -p /mnt/shared /mnt/local /run/sshd
  # A checkout under /tmp (a CI clone, a scratch clone) would vanish behind the host's own
  # /tmp: it is kept visible at the same path, as a user's NFS-mounted home would be.
  local keep=""
  case $REPO in /tmp/*) keep=$REPO; mkdir -p "$h/repo" ;; esac
  cat > "$h/init.sh" <<EOF
set -e
hostname $n
[ -n "$keep" ] && mount --bind "$keep" "$h/repo"
mount --bind $h/tmp /tmp
[ -n "$keep" ] && mkdir -p "$keep" && mount --bind "$h/repo" "$keep"
mount -t tmpfs -o size=2g tmpfs /dev/shm
# HOME is the host's own; the interpreter under /root/.pyenv stays visible in it
[ -d /root/.pyenv ] && mount --rbind /root/.pyenv $h/home/.pyenv
mount --rbind $h/home /root
mount --bind $h/local /mnt/local
[ $shared = 1 ] && mount --bind $LAB/shared /mnt/shared
/usr/sbin/sshd -f $LAB/ssh/sshd_config -o ListenAddress=$ip -o PidFile=/tmp/sshd.pid
echo ready > $h/ready
# the host's first process: reaps orphans (Ray's daemons after \`ray start\` exits) until killed
exec bash -c 'while :; do sleep 3600 & wait; done'
EOF
  setsid ip netns exec "$n" unshare --mount --pid --uts --fork --mount-proc \
    --propagation private bash "$h/init.sh" > "$h/init.log" 2>&1 < /dev/null &
  upid=$!
  for _ in $(seq 100); do
    child=$(cat "/proc/$upid/task/$upid/children" 2>/dev/null | awk '{print $1}') || true
    [ -n "$child" ] && [ -f "$h/ready" ] && break
    sleep 0.1
  done
  [ -f "$h/ready" ] || die "host $i did not start: $(tail -3 "$h/init.log")"
  echo "$child" > "$h/pid"
}

up() {
  local n=${1:-3} i
  need; keys; sleep_fix; bridge_up
  for i in $(seq 0 $((n - 1))); do
    if pid1 "$i" >/dev/null; then continue; fi
    start_host "$i"
  done
  status
}

down() {
  local d i
  for d in "$LAB"/hosts/h*; do
    [ -d "$d" ] || continue
    i=${d##*/h}
    clean_host "$i"
  done
  # namespaces or veths of hosts whose directory is gone
  for n in $(ip netns list 2>/dev/null | awk '/^rdlab-h/{print $1}'); do clean_host "${n#rdlab-h}"; done
  ip link del "$BR" 2>/dev/null || true
}

status() {
  local d i p
  for d in "$LAB"/hosts/h*; do
    [ -d "$d" ] || continue
    i=${d##*/h}
    if p=$(pid1 "$i"); then
      echo "h$i $(host_ip "$i") up pid=$p"
    else
      echo "h$i $(host_ip "$i") down"
    fi
  done
}

in_host() {
  local i=$1 p; shift
  p=$(pid1 "$i") || die "host $i is not up (scripts/cluster_lab.sh up N)"
  exec nsenter -t "$p" -m -n -p -u --wd="$PWD" -- "$@"
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  status) status ;;
  exec) [ $# -ge 3 ] || die "usage: $0 exec I CMD ..."; i=$2; shift 2; in_host "$i" "$@" ;;
  ip) host_ip "${2:?host index}" ;;
  image) image ;;
  skew-env)
    echo "LD_PRELOAD=$LAB/lib/nanosleep_fix.so /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
    echo "FAKETIME=+${2:?seconds}s"
    echo "FAKETIME_DONT_FAKE_MONOTONIC=1"
    echo "FAKETIME_DONT_RESET=1" ;;
  pid) pid1 "${2:?host index}" || die "host $2 is not up" ;;
  *) echo "usage: $0 up N | down | status | image | exec I CMD ... | ip I | pid I | skew-env S" >&2
     exit 2 ;;
esac
