r"""The links in kubelet's directories: staging links and pod volume links.

kubelet's layout (``<kubelet>`` is ``--kubelet-dir``):

* staging: ``<kubelet>\plugins\kubernetes.io\csi\<driver>\<sha256 of the
  volume handle>\globalmount`` (older: ``...\csi\pv\<pv>\globalmount``);
* pod volumes: ``<kubelet>\pods\<uid>\volumes\kubernetes.io~csi\<pv>\mount``.

Scans read links only; an entry that changes meanwhile is skipped.
"""

from __future__ import annotations

import ntpath
from dataclasses import dataclass

from node.windows.host import WindowsHost
from node.windows.paths import is_within, normalize_link_target, path_key


@dataclass(frozen=True, slots=True)
class StagingLink:
    link: str
    target: str  # normalised (``\\server\share\dir``)
    driver: str  # the directory under ...\csi: a driver name, or "pv" (older layout)


class KubeletLinks:
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
