#!/bin/bash
# Stop Samba INSIDE the e2e guest (start-samba.sh restarts it). Existing cifs
# mounts stay and see the server as down. Share contents (tmpfs) survive.
set -eu
[ -e /run/e2e-guest ] || { echo "stop-samba.sh: only runs inside the e2e guest" >&2; exit 2; }
pid=$(cat /run/e2e-samba/pid/smbd.pid 2>/dev/null || true)
[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
# The parent's exit ends the per-client smbd children; wait for all of them
# (the guest is ours alone, so matching by name is safe here).
for _ in $(seq 50); do
    pgrep -x smbd >/dev/null || break
    sleep 0.1
done
pkill -KILL -x smbd 2>/dev/null || true
rm -f /run/e2e-samba/pid/smbd.pid
echo "stop-samba.sh: smbd stopped"
