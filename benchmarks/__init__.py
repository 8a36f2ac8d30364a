"""Benchmark instrument for trio_dtlsmux.

Run it with ``python -m benchmarks.run [--quick] [--json out.json]``; see
``benchmarks/README.md`` for what the figures mean.
"""
