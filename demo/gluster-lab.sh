#!/usr/bin/env bash
# A GlusterFS volume for the two-host lab: glusterd and its brick run in one network namespace (the server) and
# every client namespace mounts the volume over FUSE on its own, so each host has its own client and cache, as
# two real hosts would. Measured recipe and options: ../shared/SHARED-STORAGE.md and the README.
#
# Sourced (`. demo/gluster-lab.sh`), it defines the functions below; run as a program it takes the same verbs:
#   demo/gluster-lab.sh check                                    exit 0 when GlusterFS can run here, else 69 and why
#   demo/gluster-lab.sh up DIR SERVER_NS SERVER_ADDR NS=MOUNT... start glusterd in SERVER_NS with everything under
#                                                                DIR, create and start a volume with Ferry's strict
#                                                                options, mount it at each MOUNT from namespace NS
#   demo/gluster-lab.sh down DIR                                 unmount, kill and remove all that `up` made
#   demo/gluster-lab.sh stop-server DIR                          kill -9 the brick (glusterfsd) and glusterd
#   demo/gluster-lab.sh start-server DIR                         start glusterd again (it restarts the brick); waits
#                                                                until every mount reaches the volume again
#   demo/gluster-lab.sh cut NS DEV                               take NS's link DEV to the file server down: calls on
#                                                                that host's mount wait until it is back (or the client
#                                                                gives up on the server), while every other link of NS
#                                                                and every other host's mount stay up
#   demo/gluster-lab.sh reconnect DIR NS DEV                     bring NS's link DEV up again; waits until NS's mount
#                                                                writes again
# Every process is started with a pid file under DIR and killed by that pid, never by name. Namespaces must exist
# and be named in /run/netns (ip netns add). Run as root.

# Volume options: no client-side caching in the volume's translators. stat-prefetch off is the essential one
# (with it, size and mtime are cached about 1 s and a rename-over gives the other client ESTALE).
GLUSTER_LAB_VOLUME_OPTIONS=(
  performance.stat-prefetch off performance.quick-read off performance.open-behind off performance.write-behind off
  performance.io-cache off performance.read-ahead off performance.readdir-ahead off performance.nl-cache off
)
# FUSE client options: no kernel attribute, entry or negative caching, direct I/O, no page cache kept on open.
GLUSTER_LAB_CLIENT_OPTIONS=(--attribute-timeout=0 --entry-timeout=0 --negative-timeout=0 --direct-io-mode=enable
                            --fopen-keep-cache=off)

# Prints why GlusterFS cannot run here on standard error and returns 1, or returns 0.
gluster_lab_check() {
  local tool
  for tool in glusterd glusterfsd glusterfs gluster nsenter; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "GlusterFS is not installed: no $tool (apt-get install glusterfs-server glusterfs-client fuse3)" >&2
      return 1
    fi
  done
  [ -f /etc/glusterfs/glusterd.vol ] || { echo "GlusterFS: no /etc/glusterfs/glusterd.vol (glusterfs-server)" >&2; return 1; }
  [ -c /dev/fuse ] || { echo "GlusterFS: no /dev/fuse (the FUSE client needs it)" >&2; return 1; }
  [ "$(id -u)" -eq 0 ] || { echo "GlusterFS lab: needs root" >&2; return 1; }
  return 0
}

# The gluster CLI, talking to this lab's glusterd only (its own socket), logging under DIR.
gluster_lab_cli() {
  local dir=$1; shift
  timeout 60 gluster --glusterd-sock="$dir/run/glusterd.socket" --log-file="$dir/logs/cli.log" --mode=script "$@"
}

# Starts glusterd in the server namespace from DIR's config; waits until it answers.
gluster_lab_start_glusterd() {
  local dir=$1 ns; ns=$(cat "$dir/server-ns")
  rm -f "$dir/run/glusterd.socket"
  # Daemons get no inherited descriptors: a caller reading this script's output to its end must not wait for them.
  nsenter --net="/run/netns/$ns" glusterd -f "$dir/glusterd.vol" -p "$dir/glusterd.pid" -l "$dir/logs/glusterd.log" \
    </dev/null >>"$dir/logs/glusterd.out" 2>&1 || { echo "gluster-lab: glusterd did not start (log: $dir/logs/glusterd.log)" >&2; return 1; }
  local _
  for _ in $(seq 1 600); do
    [ -S "$dir/run/glusterd.socket" ] && gluster_lab_cli "$dir" volume list >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "gluster-lab: glusterd did not answer on $dir/run/glusterd.socket" >&2; tail -20 "$dir/logs/glusterd.log" >&2
  return 1
}

# The brick's pid (glusterd writes it under its run directory), or nothing.
gluster_lab_brick_pid() {
  local dir=$1 file
  for file in "$dir"/run/vols/*/*.pid; do [ -f "$file" ] && cat "$file" && return 0; done
  return 0
}

# up DIR SERVER_NS SERVER_ADDR NS=MOUNT...
gluster_lab_up() {
  local dir=$1 ns=$2 addr=$3; shift 3
  gluster_lab_check || return 1
  local started; started=$(date +%s.%N)
  mkdir -p "$dir/work" "$dir/run" "$dir/logs" "$dir/brick"
  dir=$(cd "$dir" && pwd)
  echo "$ns" >"$dir/server-ns"
  local volume="ferry_$(tr -dc 'a-z0-9' </dev/urandom | head -c 10)"
  echo "$volume" >"$dir/volume"
  : >"$dir/mounts"
  # glusterd's own directories and socket, so that it never touches /var/lib/glusterd's state or another glusterd.
  sed -e "s|option working-directory .*|option working-directory $dir/work|" /etc/glusterfs/glusterd.vol \
    | awk -v run="$dir/run" '/end-volume/ { print "    option run-directory " run; print "    option glusterd-sockfile " run "/glusterd.socket" } { print }' \
    >"$dir/glusterd.vol"
  gluster_lab_start_glusterd "$dir" || return 1
  gluster_lab_cli "$dir" volume create "$volume" "$addr:$dir/brick" force >/dev/null \
    || { echo "gluster-lab: volume create failed" >&2; return 1; }
  local i
  for ((i = 0; i < ${#GLUSTER_LAB_VOLUME_OPTIONS[@]}; i += 2)); do
    gluster_lab_cli "$dir" volume set "$volume" "${GLUSTER_LAB_VOLUME_OPTIONS[i]}" "${GLUSTER_LAB_VOLUME_OPTIONS[i+1]}" >/dev/null \
      || { echo "gluster-lab: volume set ${GLUSTER_LAB_VOLUME_OPTIONS[i]} failed" >&2; return 1; }
  done
  gluster_lab_cli "$dir" volume start "$volume" >/dev/null || { echo "gluster-lab: volume start failed" >&2; return 1; }
  gluster_lab_note_strays "$dir"
  local client client_ns mount name
  for client in "$@"; do
    client_ns=${client%%=*}; mount=${client#*=}
    mkdir -p "$mount"; mount=$(cd "$mount" && pwd)
    name=$(basename "$mount")
    echo "$client_ns $mount" >>"$dir/mounts"
    nsenter --net="/run/netns/$client_ns" glusterfs --volfile-server="$addr" --volfile-id="$volume" \
      "${GLUSTER_LAB_CLIENT_OPTIONS[@]}" --log-file="$dir/logs/client-$name.log" --pid-file="$dir/client-$name.pid" "$mount" \
      </dev/null >>"$dir/logs/client-$name.out" 2>&1 || { echo "gluster-lab: mount at $mount from $client_ns failed" >&2; return 1; }
    gluster_lab_wait_mounted "$mount" || { tail -20 "$dir/logs/client-$name.log" >&2; return 1; }
  done
  # One client's file must be seen by every other: the volume is really shared.
  local first; first=$(awk 'NR == 1 { print $2 }' "$dir/mounts")
  echo "$volume" >"$first/.gluster-lab-probe"
  while read -r client_ns mount; do
    [ "$(cat "$mount/.gluster-lab-probe" 2>/dev/null)" = "$volume" ] \
      || { echo "gluster-lab: $mount does not see what $first wrote" >&2; return 1; }
  done <"$dir/mounts"
  rm -f "$first/.gluster-lab-probe"
  awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", e - s }' >"$dir/up-seconds"
}

# Waits until MOUNT is a FUSE mount of GlusterFS that answers.
gluster_lab_wait_mounted() {
  local mount=$1 _
  for _ in $(seq 1 600); do
    if grep -q " $mount fuse.glusterfs " /proc/mounts && stat -f "$mount" >/dev/null 2>&1 && ls "$mount" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.05
  done
  echo "gluster-lab: $mount did not come up" >&2
  return 1
}

# Whether PID runs (a zombie does not: this machine's init may take seconds to reap one).
gluster_lab_alive() {
  local state
  state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# kill -9 a pid from a file, and wait until it is gone (at most 5 s).
gluster_lab_kill_pidfile() {
  local file=$1 pid _
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null); rm -f "$file"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -KILL "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do gluster_lab_alive "$pid" || return 0; sleep 0.05; done
}

# The file server dies: kill -9 the brick and glusterd (no clean shutdown; the clients see their connections drop).
gluster_lab_stop_server() {
  local dir=$1 brick; brick=$(gluster_lab_brick_pid "$dir")
  [ -n "$brick" ] && { kill -KILL "$brick" 2>/dev/null; }
  gluster_lab_kill_pidfile "$dir/glusterd.pid"
  local _
  for _ in $(seq 1 100); do { [ -z "$brick" ] || ! gluster_lab_alive "$brick"; } && break; sleep 0.05; done
  rm -f "$dir"/run/vols/*/*.pid
}

# The file server comes back: glusterd restarts the brick of the started volume; wait until each mount writes.
gluster_lab_start_server() {
  local dir=$1
  gluster_lab_start_glusterd "$dir" || return 1
  local _ client_ns mount
  for _ in $(seq 1 600); do [ -n "$(gluster_lab_brick_pid "$dir")" ] && break; sleep 0.05; done
  gluster_lab_note_strays "$dir"
  while read -r client_ns mount; do
    for _ in $(seq 1 1200); do
      touch "$mount/.gluster-lab-back" 2>/dev/null && break
      sleep 0.05
    done
    touch "$mount/.gluster-lab-back" 2>/dev/null || { echo "gluster-lab: $mount did not reconnect" >&2; return 1; }
  done <"$dir/mounts"
  rm -f "$(awk 'NR == 1 { print $2 }' "$dir/mounts")/.gluster-lab-back"
}

# A client host is cut from the file server: its link DEV (in namespace NS) goes down. Its client's TCP connection
# to the brick stays open: calls on its mount wait until the link returns or the client gives up on the server
# (network.ping-timeout, 42 s by default). The other clients and NS's other links are untouched.
gluster_lab_cut() {
  local ns=$1 dev=$2
  ip -n "$ns" link set "$dev" down || { echo "gluster-lab: cannot take $dev down in $ns" >&2; return 1; }
}

# The cut host is reconnected: its link DEV comes up (its address and route come back with it); waits until its
# mount writes again (the calls the cut left waiting go on with the connection).
gluster_lab_reconnect() {
  local dir=$1 ns=$2 dev=$3
  ip -n "$ns" link set "$dev" up || { echo "gluster-lab: cannot bring $dev up in $ns" >&2; return 1; }
  local mount; mount=$(awk -v ns="$ns" '$1 == ns { print $2; exit }' "$dir/mounts")
  [ -n "$mount" ] || { echo "gluster-lab: no mount from $ns in $dir/mounts" >&2; return 1; }
  local _
  for _ in $(seq 1 1200); do
    touch "$mount/.gluster-lab-back-$ns" 2>/dev/null && break
    sleep 0.05
  done
  touch "$mount/.gluster-lab-back-$ns" 2>/dev/null || { echo "gluster-lab: $mount did not reconnect" >&2; return 1; }
  rm -f "$mount/.gluster-lab-back-$ns"
}

# Undoes `up` (also a partial one): unmounts, kills the clients, the brick and glusterd by their pids, and removes
# what glusterd wrote outside DIR (the brick's socket under /var/run/gluster, logs under /var/log/glusterfs).
gluster_lab_down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  local started; started=$(date +%s.%N)
  local client_ns mount file
  if [ -f "$dir/mounts" ]; then
    while read -r client_ns mount; do
      if grep -q " $mount fuse.glusterfs " /proc/mounts; then
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null
      fi
    done <"$dir/mounts"
  fi
  for file in "$dir"/client-*.pid; do [ -f "$file" ] && gluster_lab_kill_pidfile "$file"; done
  local brick; brick=$(gluster_lab_brick_pid "$dir")
  [ -n "$brick" ] && kill -KILL "$brick" 2>/dev/null
  gluster_lab_kill_pidfile "$dir/glusterd.pid"
  # The brick's log and the sockets glusterd names after the brick's path or this glusterd's run directory.
  local brick_name; brick_name=$(sed 's|^/||; s|/|-|g' <<<"$dir/brick")
  rm -f "/var/log/glusterfs/bricks/$brick_name.log"
  gluster_lab_remove_strays "$dir"
  [ -d "$dir" ] && awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", e - s }' >"$dir/down-seconds"
  return 0
}

# Notes the files the running brick writes outside DIR (its socket under /var/run/gluster, its log under
# /var/log/glusterfs/bricks), read from its command line, so that `down` removes exactly those.
gluster_lab_note_strays() {
  local dir=$1 brick; brick=$(gluster_lab_brick_pid "$dir")
  [ -n "$brick" ] && [ -r "/proc/$brick/cmdline" ] || return 0
  tr '\0' '\n' <"/proc/$brick/cmdline" | awk 'previous == "-S" || previous == "-l" { print } { previous = $0 }' >>"$dir/strays"
}

# What glusterd leaves outside DIR: the brick's files noted above, per-volume folders named after this lab's
# volume, then the folders and files every glusterd creates on start, removed only when empty (rmdir) or, for
# files, when no other glusterd runs on this machine.
gluster_lab_remove_strays() {
  local dir=$1 volume; volume=$(cat "$dir/volume" 2>/dev/null)
  local file
  if [ -f "$dir/strays" ]; then
    while read -r file; do
      case "$file" in /var/run/gluster/*|/run/gluster/*|/var/log/glusterfs/*) rm -f "$file" ;; esac
    done <"$dir/strays"
  fi
  if [ -n "$volume" ]; then
    rm -rf "/var/log/glusterfs/gfproxy/$volume" "/var/log/glusterfs/snaps/$volume"
  fi
  local other=0 comm pid
  for comm in /proc/[0-9]*/comm; do
    pid=${comm#/proc/}; pid=${pid%/comm}
    [ "$(cat "$comm" 2>/dev/null)" = glusterd ] && gluster_lab_alive "$pid" && { other=1; break; }
  done
  if [ "$other" = 0 ]; then
    rm -f /var/log/glusterfs/cmd_history.log /var/lib/glusterd/geo-replication/gsyncd_template.conf
  fi
  rmdir /var/log/glusterfs/geo-replication-secondaries/mbr /var/log/glusterfs/geo-replication-secondaries \
    /var/log/glusterfs/geo-replication /var/log/glusterfs/gfproxy /var/log/glusterfs/snaps /var/log/glusterfs/bricks \
    /var/run/gluster/snaps /var/lib/glusterd/geo-replication /var/lib/glusterd/ss_brick 2>/dev/null
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  verb=${1:-}; shift || true
  case "$verb" in
    check) gluster_lab_check || exit 69 ;;
    up)
      [ $# -ge 4 ] || { echo "usage: $0 up DIR SERVER_NS SERVER_ADDR NS=MOUNT..." >&2; exit 64; }
      gluster_lab_check || exit 69
      if ! gluster_lab_up "$@"; then gluster_lab_down "$1"; exit 1; fi
      echo "gluster-lab: volume $(cat "$1/volume") up in $(cat "$1/up-seconds") s" ;;
    down) [ $# -eq 1 ] || { echo "usage: $0 down DIR" >&2; exit 64; }; gluster_lab_down "$1" ;;
    stop-server) [ $# -eq 1 ] || { echo "usage: $0 stop-server DIR" >&2; exit 64; }; gluster_lab_stop_server "$1" ;;
    start-server) [ $# -eq 1 ] || { echo "usage: $0 start-server DIR" >&2; exit 64; }; gluster_lab_start_server "$1" || exit 1 ;;
    cut) [ $# -eq 2 ] || { echo "usage: $0 cut NS DEV" >&2; exit 64; }; gluster_lab_cut "$@" || exit 1 ;;
    reconnect) [ $# -eq 3 ] || { echo "usage: $0 reconnect DIR NS DEV" >&2; exit 64; }; gluster_lab_reconnect "$@" || exit 1 ;;
    *) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2; exit 64 ;;
  esac
fi
