"""Measure the built image: size, Probe-ready time and idle RSS of the driver
running from the image's root filesystem (a measurement, never a test).

    python -m tests.image.measure [--runs 5] [--idle 5]

Probe-ready: from exec of the image's entrypoint (chroot + setpriv + the
console script) to the first successful Probe on its socket. Idle RSS: the
summed VmRSS of the driver and its children ``--idle`` seconds after ready,
without any request (the controller's SMB worker starts on first use).
Needs root and ``make image``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.image.rootfs import (
    IMAGE,
    image_mount,
    inspect,
    serve_from_image,
    tree_rss_kib,
    writable_rootfs,
)


def _summary(values: list[float], unit: str, scale: float = 1.0) -> str:
    scaled = [v * scale for v in values]
    return (
        f"median {statistics.median(scaled):.0f} {unit} "
        f"(min {min(scaled):.0f}, max {max(scaled):.0f}, n={len(scaled)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    config = inspect(IMAGE)
    base = " (stand-in base)" if config.stand_in_base else ""
    print(f"{IMAGE}: {config.size / 1e6:.0f} MB{base}")
    with image_mount(IMAGE) as lower:
        for mode, as_user in (("controller", True), ("node", False)):
            ready: list[float] = []
            rss: list[float] = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="image-measure-") as tmp:
                    scratch = Path(tmp)
                    with (
                        writable_rootfs(lower, scratch / "rootfs") as root,
                        serve_from_image(
                            root, config, scratch, mode=mode, as_image_user=as_user
                        ) as served,
                    ):
                        ready.append(served.ready_seconds)
                        time.sleep(args.idle)
                        rss.append(tree_rss_kib(served.pid))
            who = "uid 10001" if as_user else "root"
            print(f"serve --mode {mode} ({who}): Probe-ready {_summary(ready, 'ms', 1000)}")
            print(f"serve --mode {mode} ({who}): idle RSS {_summary(rss, 'MiB', 1 / 1024)}")


if __name__ == "__main__":
    main()
