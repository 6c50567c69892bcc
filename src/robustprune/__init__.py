"""robustprune: adversarially robust sparse neural networks (ANP-VS and its literature)."""

__version__ = "0.1.0"
