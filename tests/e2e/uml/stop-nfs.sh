#!/bin/bash
# Stop the kernel NFS server INSIDE the e2e guest (start-nfs.sh restarts it):
# nfsd threads, exports, mountd and statd. rpcbind keeps running. Export
# contents (tmpfs) survive. Hard NFS mounts hang while it is down: tests that
# stop it should mount with soft,timeo=..,retrans=.. .
set -eu
[ -e /run/e2e-guest ] || { echo "stop-nfs.sh: only runs inside the e2e guest" >&2; exit 2; }
if [ -e /proc/fs/nfsd/threads ]; then
    rpc.nfsd 0
fi
exportfs -ua 2>/dev/null || true
# The guest is ours alone, so matching by name is safe here.
pkill -x rpc.mountd 2>/dev/null || true
pkill -x rpc.statd 2>/dev/null || true
for _ in $(seq 50); do
    pgrep -x rpc.mountd >/dev/null || pgrep -x rpc.statd >/dev/null || break
    sleep 0.1
done
echo "stop-nfs.sh: nfsd stopped"
