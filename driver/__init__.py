"""csi-driver-smb-nfs core: OS- and protocol-neutral parts of the driver."""
