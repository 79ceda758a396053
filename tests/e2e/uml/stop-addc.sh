#!/bin/bash
# Stop the Samba AD DC INSIDE the e2e guest (start-addc.sh starts it again):
# the KDC and the file server go away together. Existing cifs mounts stay and
# see the server as down. Share contents (tmpfs) survive.
# Settings (env, set by guest.py): ADDC_DIR (required).
set -eu
[ -e /run/e2e-guest ] || { echo "stop-addc.sh: only runs inside the e2e guest" >&2; exit 2; }
: "${ADDC_DIR:?ADDC_DIR must be set}"
pid=$(cat "$ADDC_DIR/samba.pid" 2>/dev/null || true)
[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
for _ in $(seq 300); do
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "stop-addc.sh: samba stopped"
        exit 0
    fi
    sleep 0.1
done
echo "stop-addc.sh: samba did not stop within 30 s" >&2
exit 1
