"""The CSI Controller service and its user-space share backends."""
