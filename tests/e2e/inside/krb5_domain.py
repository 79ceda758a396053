"""What the Kerberos guest's tests share: the Samba AD DC serving the domain
E2E.TEST on 127.0.0.1 as dc1.e2e.test (KDC :88, SMB :445; provisioned by
tests/e2e/uml/provision-addc.sh, started by start-addc.sh), its principals'
keys as secrets, the driver set up for Kerberos, volumes on the DC's share,
and the checks on the node's Kerberos files and on every process while a
mount runs.

There is no DNS and no /etc/krb5.conf, so the driver's tickets come only
from what the secret carries (keytab or credential cache, realm, kdc).

Imported only inside the UML guest booted with the AD DC.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from driver.ccache import parse_ccache
from tests.e2e.inside.common import STAGING, ProcessScan, Volume, in_process_driver
from tests.harness import Client
from tests.secret_scan import register_secret

ADDC = Path(os.environ["ADDC_DIR"])
SHARE_DIR = Path(os.environ.get("ADDC_SHARE_DIR", "/srv/addc-share"))
SERVER = "dc1.e2e.test"
SOURCE = f"//{SERVER}/share"
REALM = "E2E.TEST"
KRB5_UID = 10002  # the driver's --krb5-uid: the cruid its tickets belong to
# krbuser's key; and stale's, exported before its password changed (a rotated keytab).
KEYTAB = register_secret(base64.b64encode((ADDC / "krbuser.keytab").read_bytes()).decode())
STALE_KEYTAB = register_secret(base64.b64encode((ADDC / "stale.keytab").read_bytes()).decode())


def prepare_node() -> None:
    """The lab case: no krb5.conf on the node, no DNS; the secret says it
    all.  The user the tickets belong to exists."""
    Path("/etc/krb5.conf").unlink(missing_ok=True)
    if subprocess.run(["id", "-u", str(KRB5_UID)], capture_output=True, check=False).returncode:
        subprocess.run(
            ["useradd", "-M", "-u", str(KRB5_UID), "-s", "/usr/sbin/nologin", "csi-krb5"],
            check=True,
        )


def keytab_secret(keytab: str = KEYTAB, user: str = "krbuser") -> dict[str, str]:
    return {"username": user, "realm": REALM, "kdc": "127.0.0.1:88", "keytab": keytab}


def kinit_cache(path: Path) -> bytes:
    """A credential cache made the way an operator would (kinit)."""
    conf = path.with_suffix(".conf")
    conf.write_text(
        f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n"
        f"[realms]\n {REALM} = {{\n  kdc = {SERVER}\n }}\n"
    )
    subprocess.run(
        ["kinit", "-k", "-t", str(ADDC / "krbuser.keytab"), "-c", f"FILE:{path}",
         f"krbuser@{REALM}"],
        check=True, env={**os.environ, "KRB5_CONFIG": str(conf)},
    )  # fmt: skip
    return path.read_bytes()


def tgt_end(cache: Path) -> int:
    """When the TGT in the credential cache at ``cache`` ends (epoch seconds)."""
    tgt = parse_ccache(cache.read_bytes()).tgt()
    assert tgt is not None, f"{cache} holds no TGT"
    return tgt.end


@asynccontextmanager
async def krb5_driver(
    tmp: Path, *, controller: bool = False, lifetime: str | None = None
) -> AsyncIterator[tuple[Client, Path]]:
    """The node (and with ``controller`` the real controller, its SMB worker
    process included) in this process, set up for Kerberos; a client and the
    node's Kerberos directory.  ``lifetime``: ``kinit -l`` of keytab volumes."""
    # Under /run like in the node pod: every parent must let the cruid pass.
    krb5_dir = Path("/run") / f"krb5-{tmp.name}"
    async with in_process_driver(
        tmp,
        mount_timeout=60,
        backend_timeout=30,
        probe_timeout=5.0,
        controller=controller,
        config={"krb5_uid": KRB5_UID},
        secrets_dir=str(tmp / "secrets"),
        krb5_dir=str(krb5_dir),
        ticket_lifetime=lifetime,
    ) as (_, client):
        yield client, krb5_dir


def share_dir(name: str) -> Path:
    """A directory on the DC's share, open to the domain user (made as root
    on the server, where the SMB user maps to an idmap uid)."""
    directory = SHARE_DIR / name
    directory.mkdir(exist_ok=True)
    directory.chmod(0o777)
    return directory


def smb_volume(tmp: Path, name: str, secrets: dict[str, str], *flags: str) -> Volume:
    """A statically provisioned volume ``name``: its directory on the DC's
    share, mounted with ``secrets``."""
    return Volume(
        name,
        {"source": SOURCE, "subDir": name},
        flags,
        secrets,
        tmp / "kubelet" / STAGING / name / "globalmount",
        share_dir(name),
    )


@dataclass
class EnvScan(ProcessScan):
    """Every process while a mount runs: the secret never in any argv or
    environment; ``KRB5CCNAME`` only in mount processes' environment."""

    secret: bytes
    leaks: list[str] = field(default_factory=list)
    ccname_in: set[str] = field(default_factory=set)

    @staticmethod
    def _name(pid: str) -> str:
        """The program's name; a process caught inside execve (the new
        environment already in place, the command line not yet readable) is
        named once exec has finished, from its command line or the kernel's
        task name."""
        for attempt in range(20):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0]
                with open(f"/proc/{pid}/comm", "rb") as f:
                    comm = f.read().strip()
            except OSError:
                return f"<exited {pid}>"
            if argv0:
                return os.path.basename(argv0.decode(errors="replace"))
            if attempt == 19:
                return comm.decode(errors="replace")
            time.sleep(0.005)
        raise AssertionError  # unreachable

    def scan_once(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                # The environment first: whatever name the process has after
                # that is the one that owns this environment (or a later exec).
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.secret in cmdline or self.secret in environ:
                self.leaks.append(f"{self._name(pid)} (pid {pid})")
            if b"KRB5CCNAME=" in environ:
                name = self._name(pid)
                if not name.startswith("<exited"):
                    self.ccname_in.add(name)


def assert_private(krb5_dir: Path, key: str) -> None:
    """The node's Kerberos directories and the volume's cache (``key``) are
    the cruid's and root's alone."""
    cc_dir, kt_dir = krb5_dir / "cc", krb5_dir / "kt"
    for d, owner in ((cc_dir, KRB5_UID), (kt_dir, 0)):
        st = d.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, 0o700), (d, st)
    st = (cc_dir / key).stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (KRB5_UID, 0o600), st


def assert_forgotten(krb5_dir: Path) -> None:
    """No cache and no keytab left on the node."""
    dirs = [krb5_dir / d for d in ("cc", "kt") if (krb5_dir / d).is_dir()]
    left = [p.name for d in dirs for p in d.iterdir()]
    assert left == [], f"Kerberos files left after unstage: {left}"
