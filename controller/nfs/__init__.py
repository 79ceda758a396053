"""The NFS share backend (libnfs through ctypes, on the asyncio loop).

Layers: backend > files | treeops > ops > context > libnfs > structs > xdr; errors below all.
"""
