"""``make bench``: start-up, provisioning (SMB, NFS v3/v4, dual-protocol), the
10,000-volume burst, CreateVolume over an emulated LAN, snapshots and clones,
and node stage+publish in the user-mode Linux guest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bench import dual, lan, node, provision, scale, snapshots, startup

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_VENV = ROOT / ".cache" / "runtime-venv"


def runtime_python() -> str:
    """A venv with only the runtime dependencies, like the container image."""
    python = RUNTIME_VENV / "bin" / "python"
    stamp = RUNTIME_VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(RUNTIME_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, cwd="/")
        stamp.touch()
    else:  # dependencies unchanged: refresh only the project's own code
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                str(ROOT),
            ],
            check=True,
            cwd="/",
        )
    return str(python)


def main() -> None:
    startup.main(runtime_python())
    provision.main([])
    dual.main([])
    scale.main([])
    lan.main()
    snapshots.main([])
    node.main()


if __name__ == "__main__":
    main()
