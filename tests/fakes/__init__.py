"""Stateful fakes that record every action: shares, node platforms, a Linux host."""
