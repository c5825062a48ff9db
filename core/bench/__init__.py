"""The benchmark: the engine's speed claims measured on data it generates itself.

``run_bench`` and ``format_bench`` (``core.bench.run``) measure and print the figures:
1-4 in ``run``, 5, 6 and 10 in ``fast``, 11 in ``review``, 7, 8, 9 and 12 in ``dashboard`` (a real
server, driven by ``server``, ``browser`` and ``procstat``). See docs/benchmark.md.
"""

from core.bench.run import format_bench, run_bench

__all__ = ["format_bench", "run_bench"]
