"""Tunables of the Windows node, from the driver's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from driver.config import Config


@dataclass(frozen=True, slots=True)
class WindowsSettings:
    kubelet_dir: str = "C:\\var\\lib\\kubelet"
    require_privacy: bool = True  # New-SmbGlobalMapping -RequirePrivacy default
    read_only: Literal["refuse", "warn"] = "refuse"  # see the package doc
    max_powershell: int = 3  # PowerShell processes at once
    map_timeout: float = 110.0  # New-/Remove-SmbGlobalMapping, Test-Path of a share
    fs_timeout: float = 30.0  # is_dir of a directory on the share
    stats_timeout: float = 10.0  # GetDiskFreeSpaceExW for NodeGetVolumeStats
    status_timeout: float = 20.0  # mapping status, looked up when a volume does not answer
    status_retry: float = 15.0  # a bad mapping status is looked up again after this long

    @classmethod
    def from_config(cls, config: Config) -> WindowsSettings:
        return cls(
            kubelet_dir=config.kubelet_dir,
            map_timeout=config.mount_timeout,
            require_privacy=config.windows_require_privacy,
            read_only=config.windows_read_only,
        )
