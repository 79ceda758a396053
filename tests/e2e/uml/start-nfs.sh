#!/bin/bash
# Start (or restart after stop-nfs.sh) the kernel NFS server INSIDE the UML
# guest, on 127.0.0.1:2049 (v3 via rpcbind/mountd/statd, v4.0/4.1/4.2).
# Idempotent. Settings (env): NFS_EXPORT_DIR (/srv/nfs, its own tmpfs),
# NFS_SIZE (256m), NFS_THREADS (8), NFS_GRACE (10 s v4 grace + lease time).
#
# PATHS DIFFER BY VERSION: the export has fsid=0, so it is the NFSv4 pseudo
# root. For a subdirectory x of the export:
#   v4.x: mount -t nfs -o vers=4.1 127.0.0.1:/x            <dir>
#   v3:   mount -t nfs -o vers=3   127.0.0.1:/srv/nfs/x    <dir>
# (guest.py exports NFS_V4_ROOT=/ and NFS_V3_ROOT=$NFS_EXPORT_DIR for tests.)
set -eu
[ -e /run/e2e-guest ] || { echo "start-nfs.sh: only runs inside the e2e guest" >&2; exit 2; }
NFS_EXPORT_DIR=${NFS_EXPORT_DIR:-/srv/nfs}
grace=${NFS_GRACE:-10}

# Backing store: nfsd cannot export hostfs/overlay, so a tmpfs (on the
# /srv tmpfs guest-init.sh mounted, the root being read-only).
if ! mountpoint -q "$NFS_EXPORT_DIR"; then
    mkdir -p "$NFS_EXPORT_DIR"
    mount -t tmpfs -o "mode=777,size=${NFS_SIZE:-256m}" nfs "$NFS_EXPORT_DIR"
fi

modprobe nfsd
mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/v4recovery
mountpoint -q /var/lib/nfs/rpc_pipefs || mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
pgrep -x rpcbind >/dev/null || rpcbind -w

echo "$NFS_EXPORT_DIR 127.0.0.0/8(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0)" >/etc/exports
exportfs -ra
pgrep -x rpc.mountd >/dev/null || rpc.mountd
pgrep -x rpc.statd >/dev/null || rpc.statd --no-notify

# Short v4 grace/lease so opens after a (re)start do not wait 90 s.
# (Writable only while nfsd is stopped.)
if [ "$(cat /proc/fs/nfsd/threads)" = 0 ]; then
    echo "$grace" >/proc/fs/nfsd/nfsv4leasetime
    echo "$grace" >/proc/fs/nfsd/nfsv4gracetime 2>/dev/null || true
    rpc.nfsd "${NFS_THREADS:-8}"
fi
for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/2049) 2>/dev/null; then
        echo "start-nfs.sh: nfsd listening on 127.0.0.1:2049, export $NFS_EXPORT_DIR (fsid=0)"
        exit 0
    fi
    sleep 0.1
done
echo "start-nfs.sh: nfsd not listening after 10 s" >&2
exit 1
