"""Reproducible zoo benchmarks (``rankcraft bench``)."""

from rankcraft.bench.zoo import load_presets, run_benchmark

__all__ = ["load_presets", "run_benchmark"]
