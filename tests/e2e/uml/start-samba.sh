#!/bin/bash
# Start (or restart after stop-samba.sh) Samba on 127.0.0.1:445 INSIDE the
# UML guest. Idempotent. Settings (env, set by guest.py via the env file):
#   SMB_USER (e2e)  SMB_PASSWORD (required; read from env, fed to smbpasswd
#   on stdin)  SMB_SHARE (share)  SMB_SHARE_DIR (/srv/smb, its own tmpfs)
#   SMB_SIZE (256m, tmpfs size)
# Clients: mount -t cifs //127.0.0.1/$SMB_SHARE <dir> -o credentials=<file>
set -eu
[ -e /run/e2e-guest ] || { echo "start-samba.sh: only runs inside the e2e guest" >&2; exit 2; }
: "${SMB_PASSWORD:?SMB_PASSWORD must be set}"
SMB_USER=${SMB_USER:-e2e}
SMB_SHARE=${SMB_SHARE:-share}
SMB_SHARE_DIR=${SMB_SHARE_DIR:-/srv/smb}
state=/run/e2e-samba
conf=$state/smb.conf

# Backing store: a tmpfs of known size (guest-init.sh put a tmpfs on /srv,
# the root being read-only).
if ! mountpoint -q "$SMB_SHARE_DIR"; then
    mkdir -p "$SMB_SHARE_DIR"
    mount -t tmpfs -o "mode=777,size=${SMB_SIZE:-256m}" smb "$SMB_SHARE_DIR"
fi

mkdir -p "$state"/{private,state,cache,lock,pid,ncalrpc}
cat >"$conf" <<CONF
[global]
    server role = standalone server
    netbios name = E2EGUEST
    workgroup = WORKGROUP
    smb ports = 445
    interfaces = lo
    bind interfaces only = yes
    disable netbios = yes
    private dir = $state/private
    state directory = $state/state
    cache directory = $state/cache
    lock directory = $state/lock
    pid directory = $state/pid
    ncalrpc dir = $state/ncalrpc
    passdb backend = tdbsam:$state/private/passdb.tdb
    log file = $state/log.smbd
    max log size = 0
    log level = 1
    load printers = no
    printcap name = /dev/null
    disable spoolss = yes
    map to guest = never
[$SMB_SHARE]
    path = $SMB_SHARE_DIR
    read only = no
    valid users = $SMB_USER
CONF

id "$SMB_USER" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$SMB_USER"
# -s: password from stdin (printf is a builtin: never in any argv)
printf '%s\n%s\n' "$SMB_PASSWORD" "$SMB_PASSWORD" | smbpasswd -c "$conf" -s -a "$SMB_USER" >/dev/null

pid=$(cat "$state/pid/smbd.pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    smbd -D -s "$conf"
fi
# ready when 445 accepts connections
for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/445) 2>/dev/null; then
        echo "start-samba.sh: smbd listening on 127.0.0.1:445, share //127.0.0.1/$SMB_SHARE -> $SMB_SHARE_DIR"
        exit 0
    fi
    sleep 0.1
done
echo "start-samba.sh: smbd not listening after 10 s; log:" >&2
tail -n 30 "$state/log.smbd" >&2 || true
exit 1
