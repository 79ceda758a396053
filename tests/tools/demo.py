"""``make run``: the driver in ``all`` mode beside a demo Samba share.

Starts a user-space Samba on 127.0.0.1 (private state under the run
directory, a share ``csi``, a demo user with a random password kept in a 0600
file), then runs ``csi-smb-nfs serve`` in the foreground on
``<run-dir>/csi.sock`` and prints the ``ctl`` commands to try.  Ctrl-C stops
both.  Without root or without Samba the driver still starts, and the missing
piece is named.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path

from driver.cli import main as driver_main

DEMO_USER = "csidemo"
DEMO_SHARE = "csi"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _start_samba(run_dir: Path) -> tuple[object | None, str]:
    """Start Samba; return (server, message for the newcomer)."""
    if shutil.which("smbd") is None and not Path("/usr/sbin/smbd").exists():
        return None, (
            "Samba is not installed, so there is no demo share.\n"
            "  Install it: sudo apt-get install -y --no-install-recommends samba"
        )
    if os.geteuid() != 0:
        return None, (
            "Not root, so no demo Samba share (it needs a system user).\n"
            "  Run `sudo make run`, or point --param source=//server/share at a share you have."
        )
    from tests.servers.samba import SambaError, SambaServer, Share

    password = secrets.token_urlsafe(18)
    server = SambaServer(run_dir / "samba", 0, {DEMO_USER: password}, [Share(DEMO_SHARE)])
    try:
        server.start()
    except SambaError as exc:
        return None, f"Samba did not start: {exc}"
    _write_private(run_dir / "smb.secrets", f"username={DEMO_USER}\npassword={password}\n")
    (run_dir / "smb.params").write_text(
        f"source=//{server.host}:{server.port}/{DEMO_SHARE}\nonDelete=archive\n"
    )
    return server, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("run"))
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = run_dir / "csi.sock"
    server, problem = _start_samba(run_dir)
    script = Path(sys.executable).parent / "csi-smb-nfs"
    command = str(script) if script.exists() else f"{sys.executable} -m driver"
    if Path.cwd() in run_dir.parents:
        rel = os.path.relpath(run_dir)
        command = os.path.relpath(command) if script.exists() else command
    else:
        rel = str(run_dir)
    ctl = f"{command} ctl --endpoint unix://{sock}"
    lines = ["", "csi-driver-smb-nfs demo", "=" * 23]
    if server is not None:
        share_path = server.share_path(DEMO_SHARE)  # type: ignore[attr-defined]
        lines += [
            f"Samba share: //{server.host}:{server.port}/{DEMO_SHARE}"  # type: ignore[attr-defined]
            f"  (user {DEMO_USER}, password in {rel}/smb.secrets, files in {share_path})",
            "",
            "Try, in another terminal:",
            f"  {ctl} probe",
            f"  {ctl} capabilities",
            f"  {ctl} create-volume pvc-demo --params-file {rel}/smb.params"
            f" --secrets-file {rel}/smb.secrets",
            f"  ls -la {share_path}",
            f"  {ctl} capacity --params-file {rel}/smb.params",
            f"  {ctl} delete-volume 'VOLUME_ID' --secrets-file {rel}/smb.secrets",
            "       (the demo StorageClass archives: the directory becomes archived-pvc-demo)",
        ]
    else:
        lines += [problem, "", "The driver runs anyway. Try:", f"  {ctl} probe"]
    lines += [
        "",
        f"Node RPCs (as root) take kubelet's paths under {rel}/kubelet (the demo's --kubelet-dir):",
        f"  staging {rel}/kubelet/plugins/kubernetes.io/csi/demo/pvc-demo/globalmount,",
        f"  target  {rel}/kubelet/pods/demo-pod/mount",
        "",
        "NFS: pass --param source=server:/export (or nfs://server:port/export) and",
        "     --mount-option nfsvers=3 to choose the version; no secrets are needed.",
        "",
        "Ctrl-C stops the driver (and the demo Samba).",
        "",
    ]
    print("\n".join(lines), flush=True)
    try:
        serve = ["serve", "--endpoint", f"unix://{sock}", "--mode", "all", "--log-format", "text"]
        return driver_main([*serve, "--kubelet-dir", str(run_dir / "kubelet")])
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
