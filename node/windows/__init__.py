r"""The Windows node: SMB global mappings and directory symlinks.

The driver runs as a HostProcess container (``NT AUTHORITY\SYSTEM`` on the
host), so it does the work itself, without csi-proxy:

* **Stage** maps the share ROOT ``\\server\share`` once with
  ``New-SmbGlobalMapping`` (one mapping per share, whatever the number of
  volumes on it, kept while a staging link points into the share), then
  replaces kubelet's pre-created staging directory by a directory
  symlink to ``\\server\share\subdir``.  The probe is of the volume's own
  directory, never of the share root (the account may see only its folders).
  A mapping is removed and re-created only when ``Get-SmbGlobalMapping``
  says ``Disconnected`` or ``Unavailable``; in any other state it is kept,
  since pods of other volumes run on it, and a volume directory that does
  not answer fails that stage alone.  A dangling or wrong staging link is
  replaced.
* **Publish** replaces the pre-created target directory by a symlink to the
  staging path.
* **Unpublish / unstage** remove links, never anything through a link (no
  recursive delete).  The mapping of a share is removed at the unstage of its
  last volume: when no staging link under kubelet's CSI plugin directory
  (``<kubelet>\plugins\kubernetes.io\csi\<driver>\<sha256>\globalmount``,
  and the older ``...\csi\pv\<pv>\globalmount``) still points into the share.
  Links of every driver are counted, so a mapping another driver relies on
  is never pulled away.
* **Stats** ask ``GetDiskFreeSpaceExW`` through the link, in a thread and
  bounded in time (no PowerShell per call); no inode counts on Windows.
* **Start** (after a node reboot, say): the share of every staging link of
  this driver is looked up.  A share no longer mapped cannot be mapped then
  (credentials come only with NodeStageVolume, which kubelet sends again);
  its volumes are abnormal in stats, saying so, until that NodeStage.
* **Republish** (``requiresRepublish``): a published target whose volume
  does not answer through its link, and whose share's mapping is gone or
  ``Disconnected``/``Unavailable``, gets the mapping re-created with the
  node-stage credentials kept in memory (never on disk) since the stage; the
  links stay.  After a driver restart those are gone until the volume is
  staged again: FailedPrecondition, "restart the pod".  Any other status is
  left to the SMB client to recover.  A volume that answers costs no
  PowerShell.
* **Inline ephemeral volumes**: the share's global mapping (made with the
  NodePublish secret if none exists) and a symlink at the target straight to
  ``\\server\share\subdir``; nothing is created on the server.  The mapping's
  refcount counts these target links under ``<kubelet>\pods`` as well as
  the staging links, so neither kind pulls the mapping from the other.

Decisions an operator should know about:

* **Read-only** is enforced by the container runtime: kubelet passes the pod
  volume's ``readOnly`` (or the PV's ``csi.readOnly``) to containerd, and
  hcsshim mounts the link read-only in the container; such publishes are
  accepted.  A reader-only access mode on a volume the pod does not mount
  ``readOnly`` reaches this driver only, and a directory symlink cannot be
  read-only, so it is refused (InvalidArgument, saying to set ``readOnly:
  true``) unless ``WindowsSettings.read_only="warn"`` (``--windows-read-only
  warn``), which accepts it writable with a warning.  Staging is never
  refused for read-only: the staging link is not what a pod sees.
* **Stats** cost no PowerShell while the volume's directory answers: that
  is its health.  A volume whose directory does not answer (or whose link
  dangles) is abnormal, with the mapping's status in the message.
* **Encryption**: ``-RequirePrivacy`` is ``$true`` unless the StorageClass
  mount options say ``requirePrivacy=false`` (``seal`` turns it on where the
  settings default is off).  A mapping that already exists is reused as it
  is; a warning is logged when it does not require privacy but a volume asks.
* **One identity per server**: Windows holds one set of credentials per SMB
  server for a logon session (SYSTEM's, for every global mapping), so all
  shares of one server on a node use the account of the first volume staged
  there.  A volume with another account for the same server fails with
  error 1219 ("multiple connections to a server or shared resource by the
  same user, using more than one user name"), answered FailedPrecondition
  naming that rule; mapping several folders of one share does not cause it.
* **User names** need a domain: ``DOMAIN\user`` from the secret's ``domain``
  key (or ``DOMAIN\user`` written in ``username``), a ``user@domain`` UPN as
  it is, else ``server\user`` (a local account of the file server) — a bare
  user name fails with "A specified logon session does not exist".
* **Ports**: the mapping always uses port 445; a source or ``port=`` mount
  option with another port is a FailedPrecondition.
* **DNS**: the HostProcess container uses the host's resolver, not cluster
  DNS, so a Service name (``*.svc``, ``*.cluster.local``) cannot resolve
  (error 53): such a source is a FailedPrecondition naming the cause.
* **NFS** volumes are a FailedPrecondition on Windows nodes.
"""

from __future__ import annotations

from node.windows.host import DiskSpace, RealWindowsHost, WindowsHost
from node.windows.mappings import MappingState, ShareMappings
from node.windows.paths import (
    MAX_PATH,
    is_within,
    normalize_link_target,
    normalize_path,
    path_key,
    smb_user,
    unc_host,
    unc_root,
)
from node.windows.platform import WindowsPlatform
from node.windows.scripts import (
    ENV_PASSWORD,
    ENV_REMOTE_PATH,
    ENV_REQUIRE_PRIVACY,
    ENV_USER,
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
)
from node.windows.settings import WindowsSettings

__all__ = [
    "ENV_PASSWORD",
    "ENV_REMOTE_PATH",
    "ENV_REQUIRE_PRIVACY",
    "ENV_USER",
    "MAX_PATH",
    "OP_GET_MAPPING",
    "OP_NEW_MAPPING",
    "OP_REMOVE_MAPPING",
    "SCRIPTS",
    "DiskSpace",
    "MappingState",
    "RealWindowsHost",
    "ShareMappings",
    "WindowsHost",
    "WindowsPlatform",
    "WindowsSettings",
    "is_within",
    "normalize_link_target",
    "normalize_path",
    "path_key",
    "smb_user",
    "unc_host",
    "unc_root",
]
