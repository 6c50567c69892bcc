"""Metrics: latent vulnerability, unit/weight sparsity, and the paper's memory/FLOPs accounting."""

from robustprune.metrics.cost import paper_cost, paper_flops, paper_memory
from robustprune.metrics.sparsity import (
    active_units,
    sparsity_summary,
    total_units,
    unit_sparsity,
    weight_sparsity,
)
from robustprune.metrics.vulnerability import VulnerabilityMeter, layer_vulnerability, vulnerability

__all__ = [
    "VulnerabilityMeter",
    "active_units",
    "layer_vulnerability",
    "paper_cost",
    "paper_flops",
    "paper_memory",
    "sparsity_summary",
    "total_units",
    "unit_sparsity",
    "vulnerability",
    "weight_sparsity",
]
