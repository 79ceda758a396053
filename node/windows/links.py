r"""The links in kubelet's directories: staging links and pod volume links.

Stage and publish make directory symlinks (:meth:`KubeletLinks.ensure`);
unstage, unpublish and the mapping refcount read them back.

kubelet's layout (``<kubelet>`` is ``--kubelet-dir``):

* staging: ``<kubelet>\plugins\kubernetes.io\csi\<driver>\<sha256 of the
  volume handle>\globalmount`` (older: ``...\csi\pv\<pv>\globalmount``);
* pod volumes: ``<kubelet>\pods\<uid>\volumes\kubernetes.io~csi\<pv>\mount``.

Scans read links only; an entry that changes meanwhile is skipped.
"""

from __future__ import annotations

import ntpath
from dataclasses import dataclass

from driver.errors import FailedPrecondition
from driver.log import get_logger
from node.windows.host import WindowsHost
from node.windows.paths import is_within, normalize_link_target, path_key, unc_root

log = get_logger("node.windows")

MAX_HOPS = 8  # links followed from a volume path before giving up


@dataclass(frozen=True, slots=True)
class StagingLink:
    link: str
    target: str  # normalised (``\\server\share\dir``)
    driver: str  # the directory under ...\csi: a driver name, or "pv" (older layout)


class KubeletLinks:
    """Making, reading and finding kubelet's links (host calls raise OSError)."""

    def __init__(self, host: WindowsHost, kubelet_dir: str) -> None:
        self.host = host
        self.csi_dir = ntpath.join(kubelet_dir, "plugins", "kubernetes.io", "csi")
        self.pods_dir = ntpath.join(kubelet_dir, "pods")

    async def staging_links(self) -> list[StagingLink]:
        """Every staging link, of any CSI driver."""
        found: list[StagingLink] = []
        if not await self.host.lexists(self.csi_dir):
            return found
        for driver in await self.host.list_dir(self.csi_dir):
            driver_dir = ntpath.join(self.csi_dir, driver)
            try:
                volumes = await self.host.list_dir(driver_dir)
            except OSError:
                continue  # a file, or gone meanwhile
            for volume in volumes:
                link = ntpath.join(driver_dir, volume, "globalmount")
                try:
                    if not await self.host.is_link(link):
                        continue
                    target = normalize_link_target(await self.host.read_link(link))
                except OSError:
                    continue
                found.append(StagingLink(link, target, driver))
        return found

    async def pod_links(self) -> list[tuple[str, str]]:
        """(link, its target) of every pod volume link, of any CSI driver."""
        found: list[tuple[str, str]] = []
        if not await self.host.lexists(self.pods_dir):
            return found
        for pod in await self.host.list_dir(self.pods_dir):
            csi = ntpath.join(self.pods_dir, pod, "volumes", "kubernetes.io~csi")
            try:
                volumes = await self.host.list_dir(csi)
            except OSError:
                continue  # no CSI volumes, or the pod went away meanwhile
            for volume in volumes:
                link = ntpath.join(csi, volume, "mount")
                try:
                    if await self.host.is_link(link):
                        found.append((link, normalize_link_target(await self.host.read_link(link))))
                except OSError:
                    continue  # unpublished meanwhile
        return found

    async def into(self, root: str, *, exclude: str) -> list[str]:
        """The users of ``root``'s mapping, but ``exclude``: staging links (of
        any CSI driver) and inline volumes' pod links that point into it
        (a persistent volume's pod link points to its staging link)."""
        skip = path_key(exclude)
        staged = [
            s.link
            for s in await self.staging_links()
            if path_key(s.link) != skip and is_within(s.target, root)
        ]
        inline = [
            link
            for link, target in await self.pod_links()
            if path_key(link) != skip and is_within(target, root)
        ]
        return staged + inline

    async def published_elsewhere(self, staging_path: str, target_path: str) -> list[str]:
        """Pod volume links that point at ``staging_path``, ``target_path`` excepted."""
        staging, skip = path_key(staging_path), path_key(target_path)
        return [
            link
            for link, target in await self.pod_links()
            if path_key(link) != skip and path_key(target) == staging
        ]

    async def ensure(self, link: str, target: str, *, what: str) -> None:
        """Make ``link`` a directory symlink to ``target``, replacing only an
        empty directory or another link."""
        if await self.host.is_link(link):
            current = await self.host.read_link(link)
            if path_key(current) == path_key(target):
                return
            log.info("replacing a wrong link", link=link, was=current, target=target)
            await self.host.remove_link(link)
        elif await self.host.lexists(link):
            if not await self.host.is_dir(link):
                raise FailedPrecondition(f"{what} {link} exists and is not a directory")
            if await self.host.list_dir(link):
                raise FailedPrecondition(
                    f"{what} {link} is a non-empty directory; refusing to replace it"
                )
            await self.host.remove_empty_dir(link)
        else:
            parent = ntpath.dirname(link)
            if not await self.host.lexists(parent):
                await self.host.make_dirs(parent)
        await self.host.symlink_dir(link, target)

    async def points_to(self, link: str, target: str) -> bool:
        """``link`` is a link to ``target`` (normalised, case-insensitive)."""
        if not await self.host.is_link(link):
            return False
        current = normalize_link_target(await self.host.read_link(link))
        return path_key(current) == path_key(normalize_link_target(target))

    async def share_of(self, link: str) -> str | None:
        r"""``\\server\share`` that ``link`` points into, None if it is no
        link or points elsewhere (a persistent volume's pod link points to
        its staging link)."""
        if not await self.host.is_link(link):
            return None
        return unc_root(normalize_link_target(await self.host.read_link(link)))

    async def resolve(self, path: str) -> tuple[str, str | None]:
        """Follow links from ``path``: (final target, problem or None)."""
        current = path
        for _ in range(MAX_HOPS):
            if not await self.host.is_link(current):
                return current, None
            target = normalize_link_target(await self.host.read_link(current))
            if not target.startswith("\\\\") and not await self.host.lexists(target):
                return target, f"{current} points to {target}, which does not exist"
            current = target
        return current, f"{path}: too many levels of links"
