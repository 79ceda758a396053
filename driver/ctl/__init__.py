"""``csi-smb-nfs ctl``: the command modules, merged in ``driver.ctl.main``."""
