r"""Which host paths node RPCs may touch: kubelet's own directories only.

The node plugin runs as root (Linux) or SYSTEM (Windows) and creates,
replaces and removes mount points and links where a caller says.  kubelet
only ever says:

* staging paths under ``<kubelet>/plugins/kubernetes.io/csi/``
  (``.../<driver>/<sha256>/globalmount``, older ``.../pv/<pv>/globalmount``);
* target paths under ``<kubelet>/pods/``
  (``.../<pod uid>/volumes/kubernetes.io~csi/<pv>/mount``).

Anything else is refused with InvalidArgument before the platform acts, on
every OS: on Windows the endpoint is loopback TCP, reachable by any local
process, and on Linux it is defence in depth.  Paths arrive here already
normalised by the platform's ``check_path``; Windows paths compare
case-insensitively.
"""

from __future__ import annotations

import ntpath
import posixpath
from dataclasses import dataclass

from driver.errors import InvalidArgument

STAGING_SUBDIR = ("plugins", "kubernetes.io", "csi")
TARGET_SUBDIR = ("pods",)


@dataclass(frozen=True, slots=True)
class KubeletPaths:
    """kubelet's root directory (normalised by the platform) and the rules."""

    root: str
    windows: bool = False

    @property
    def staging_root(self) -> str:
        return self._join(*STAGING_SUBDIR)

    @property
    def target_root(self) -> str:
        return self._join(*TARGET_SUBDIR)

    def check_staging(self, path: str, *, what: str) -> None:
        self._check(path, (self.staging_root,), what=what)

    def check_target(self, path: str, *, what: str) -> None:
        self._check(path, (self.target_root,), what=what)

    def check_volume_path(self, path: str, *, what: str) -> None:
        """NodeGetVolumeStats: a published target or a staging path."""
        self._check(path, (self.target_root, self.staging_root), what=what)

    def _join(self, *parts: str) -> str:
        if self.windows:
            return ntpath.join(self.root, *parts)
        return posixpath.join(self.root, *parts)

    def _below(self, path: str, root: str) -> bool:
        sep = "\\" if self.windows else "/"
        if self.windows:
            path, root = path.casefold(), root.casefold()
        return path.startswith(root.rstrip(sep) + sep) and len(path) > len(root) + 1

    def _check(self, path: str, roots: tuple[str, ...], *, what: str) -> None:
        if any(self._below(path, root) for root in roots):
            return
        allowed = " or ".join(roots)
        raise InvalidArgument(
            f"{what} {path} is outside kubelet's directories ({allowed}); "
            "the node plugin only works on paths kubelet gives it (see --kubelet-dir)"
        )
