"""The SMB share backend (smbprotocol), in layers: worker | backend > channel > steps > errors."""
