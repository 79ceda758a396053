"""The Linux node platform: kernel cifs/nfs mounts and bind mounts.

State lives in the kernel's mount table (``/proc/self/mountinfo``), never in
memory, so a restarted driver keeps serving what the previous one staged and
published, and every call is idempotent by looking before acting.

Stage    ``mount -t cifs //server/share/dir <staging> -o ...`` (credentials in a
         0600 file that exists only while ``mount`` runs) or
         ``mount -t nfs server:/export/dir <staging> -o ...``.
Publish  ``mount --bind <staging> <target>`` (+ ``mount -o remount,bind,ro``).
Undo     ``umount`` bounded in time, ``umount -l`` as the last resort; then
         ``rmdir`` (never a recursive delete: it could reach through a mount).
Stats    ``statvfs`` in a daemon thread bounded in time: a dead server makes
         the volume *abnormal*, it never hangs the RPC.

Modules: ``mountinfo`` and ``options`` are pure (parsing the mount table;
mount options, devices and credentials text); ``errors`` maps mount failures;
``host`` and ``probes`` hold the system calls; ``mounter`` runs the commands;
``platform`` decides what to do.

Operator-facing notes (defaults, health, troubleshooting): docs/node-linux.md.
"""

from node.linux.host import FsStats, HostView, ProcHost
from node.linux.options import MountSpec, mount_spec, nfs_device, smb_device
from node.linux.platform import (
    CAPABILITIES,
    PROBE_TIMEOUT,
    SECRETS_DIR,
    UNMOUNT_TIMEOUT,
    LinuxPlatform,
)
from node.linux.probes import MAX_PROBES, Prober, ProbesExhausted, ProbeTimeout

__all__ = [
    "CAPABILITIES",
    "MAX_PROBES",
    "PROBE_TIMEOUT",
    "SECRETS_DIR",
    "UNMOUNT_TIMEOUT",
    "FsStats",
    "HostView",
    "LinuxPlatform",
    "MountSpec",
    "ProbeTimeout",
    "Prober",
    "ProbesExhausted",
    "ProcHost",
    "mount_spec",
    "nfs_device",
    "smb_device",
]
