"""The CSI Node service and its platform mounters."""
