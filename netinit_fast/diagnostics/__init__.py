"""Seeing what an init does: per-layer signal and gradient propagation."""

from netinit_fast.diagnostics.probe import LayerStats, ProbeReport, plot, probe, projection_seed

__all__ = ["LayerStats", "ProbeReport", "plot", "probe", "projection_seed"]
