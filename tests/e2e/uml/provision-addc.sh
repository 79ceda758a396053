#!/bin/bash
# Provision (on the HOST, once) the Samba Active Directory domain the UML
# guest serves for the Kerberos e2e tests; start-addc.sh runs it inside.
#
# Provisioning inside the guest costs ~80 s of UML time, on the host ~25 s,
# once per samba version: the result lives in <repo>/.cache/addc/<version>/
# and the guest uses it in place through the repo's tmpfs overlay (its writes
# are thrown away at poweroff). Everything here is rebuilt from nothing by
# this script; nothing in it is committed.
#
#   realm E2E.TEST (domain E2E), DC host name dc1.e2e.test (the guest maps
#   it to 127.0.0.1 in /etc/hosts; no DNS: --dns-backend=NONE)
#   krbuser   keytab  krbuser.keytab (its password is random and forgotten)
#   stale     keytab  stale.keytab, exported BEFORE the password was changed
#             again: a rotated account whose keytab the KDC refuses
#   nfs1      an account with the SPN nfs/nfs1.e2e.test; its key in
#             nfs-server.keytab (the kernel NFS server's, for sec=krb5)
#
# Idempotent and flock-safe; prints ADDC_DIR=<dir> on its last line.
set -eu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
REALM=E2E.TEST
DOMAIN=E2E

for tool in samba-tool samba kinit; do
    command -v "$tool" >/dev/null || {
        echo "provision-addc.sh: '$tool' missing: apt-get install samba-ad-dc samba-ad-provision samba-dsdb-modules winbind krb5-user" >&2
        exit 1
    }
done
version=$(samba --version | tr -cd 'A-Za-z0-9.-')
base=$repo/.cache/addc
# -2: the layout (bump it when this script makes something new)
dir=$base/$version-2
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if [ -f "$dir/.ready" ]; then
    echo "ADDC_DIR=$dir"
    exit 0
fi

password() {  # random, meets AD's complexity rules, never printed
    printf 'Aa1-%s' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
}

# Provision under the FINAL path (smb.conf and the databases hold absolute
# paths), then mark it ready; a half-made dir is wiped on the next run.
rm -rf "$dir"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
log=$dir/provision.log
# samba-tool takes the administrator password only as an argument; it is
# random, unused afterwards, and this runs on the host before any test.
if ! samba-tool domain provision --realm="$REALM" --domain="$DOMAIN" \
    --server-role=dc --dns-backend=NONE --host-name=dc1 \
    --adminpass="$(password)" --targetdir="$dir" \
    --option="interfaces = lo" --option="bind interfaces only = yes" \
    --option="disable netbios = yes" >"$log" 2>&1; then
    echo "provision-addc.sh: samba-tool domain provision failed; log: $log" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
ldb=$dir/private/sam.ldb
conf=$dir/etc/smb.conf
# The share the tests use (a tmpfs in the guest, made by start-addc.sh).
printf '\n[share]\n\tpath = /srv/addc-share\n\tread only = no\n' >>"$conf"
samba-tool user create krbuser "$(password)" -H "$ldb" >>"$log" 2>&1
samba-tool user create stale "$(password)" -H "$ldb" >>"$log" 2>&1
samba-tool domain exportkeytab "$dir/krbuser.keytab" --principal="krbuser@$REALM" -s "$conf" >>"$log" 2>&1
samba-tool domain exportkeytab "$dir/stale.keytab" --principal="stale@$REALM" -s "$conf" >>"$log" 2>&1
samba-tool user setpassword stale --newpassword="$(password)" -H "$ldb" >>"$log" 2>&1
samba-tool user create nfs1 "$(password)" -H "$ldb" >>"$log" 2>&1
samba-tool spn add nfs/nfs1.e2e.test nfs1 -H "$ldb" >>"$log" 2>&1
samba-tool domain exportkeytab "$dir/nfs-server.keytab" --principal=nfs/nfs1.e2e.test -s "$conf" >>"$log" 2>&1
echo "$REALM" >"$dir/realm"
touch "$dir/.ready"
echo "ADDC_DIR=$dir"
