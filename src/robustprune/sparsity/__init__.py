"""Unit masks and pruning: beta-Bernoulli dropout (ANP-VS's mask layer) and its helpers."""

from robustprune.sparsity.bbdropout import (
    BBDropout,
    bbd_layers,
    default_a_init_conv,
    install_bbd,
    model_kl,
    shared_noise,
)

__all__ = ["BBDropout", "bbd_layers", "default_a_init_conv", "install_bbd", "model_kl", "shared_noise"]
