#!/usr/bin/env bash
# Install (as root) or list (otherwise) the Debian packages the tests need:
# a real Samba and NFS server on loopback, the NFS client library the
# controller uses, and the host half of the user-mode Linux guest for e2e.
set -euo pipefail

PACKAGES=(
  samba smbclient            # Samba server for integration tests and `make run`
  nfs-ganesha nfs-ganesha-vfs rpcbind   # user-space NFS server (v3/v4)
  libnfs13                   # the controller's user-space NFS client
  util-linux mount iproute2 procps psmisc   # mount/unshare/nsenter, ip, ps, fuser
  cifs-utils nfs-kernel-server nfs-common kmod   # guest side of e2e (runs host userland)
  samba-ad-dc samba-ad-provision samba-dsdb-modules winbind   # Kerberos e2e: an AD DC in the guest
  krb5-user keyutils         # kinit/kvno for the node's tickets; request-key for cifs.upcall
  gcc libkrb5-dev            # builds the controller's Kerberos extra (gssapi, krb5: no wheels)
  podman buildah mmdebstrap  # `make image` without a Docker daemon; stand-in base image
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "installing: ${missing[*]}" >&2
# Package scripts must not start host daemons (ports, rpcbind) behind our back.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
