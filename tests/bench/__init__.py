"""Benchmarks (``make bench``): measure and report, never assert.

Every figure is reported with a baseline measured in the same run, as a
ratio, because machines are noisy.  Results go to ``bench-results/*.json``
and a small table on stdout.
"""
