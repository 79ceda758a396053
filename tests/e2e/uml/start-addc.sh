#!/bin/bash
# Start the Samba Active Directory DC (KDC on 127.0.0.1:88, SMB on :445)
# INSIDE the UML guest, from the domain provision-addc.sh made on the host.
# Settings (env, set by guest.py): ADDC_DIR (required), ADDC_SHARE_DIR
# (/srv/addc-share). The DC's name dc1.e2e.test resolves to 127.0.0.1
# through /etc/hosts; there is no DNS and no /etc/krb5.conf (the driver
# gets the realm and KDC from the secret's realm/kdc keys).
# Clients: //dc1.e2e.test/share as krbuser@E2E.TEST (keytab
# $ADDC_DIR/krbuser.keytab).
set -eu
[ -e /run/e2e-guest ] || { echo "start-addc.sh: only runs inside the e2e guest" >&2; exit 2; }
: "${ADDC_DIR:?ADDC_DIR must be set}"
share=${ADDC_SHARE_DIR:-/srv/addc-share}
conf=$ADDC_DIR/etc/smb.conf
[ -f "$ADDC_DIR/.ready" ] || { echo "start-addc.sh: $ADDC_DIR is not provisioned" >&2; exit 1; }

if ! mountpoint -q "$share"; then
    mkdir -p "$share"
    mount -t tmpfs -o mode=777,size=64m addc "$share"
fi
grep -q 'dc1.e2e.test' /etc/hosts || echo '127.0.0.1 dc1.e2e.test dc1' >>/etc/hosts

pidfile=$ADDC_DIR/samba.pid
pid=$(cat "$pidfile" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    # -M single: one process (the prefork model forks a dozen in UML)
    setsid samba -s "$conf" -i -M single </dev/null >"$ADDC_DIR/samba.log" 2>&1 &
    echo $! >"$pidfile"
fi
for _ in $(seq 600); do
    if (exec 3<>/dev/tcp/127.0.0.1/88) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/445) 2>/dev/null; then
        echo "start-addc.sh: AD DC up (KDC :88, SMB :445), share //dc1.e2e.test/share -> $share"
        exit 0
    fi
    sleep 0.1
done
echo "start-addc.sh: the AD DC is not listening after 60 s; log:" >&2
tail -n 30 "$ADDC_DIR/samba.log" >&2 || true
exit 1
