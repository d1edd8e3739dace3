"""Metrics: sample quality (FID, KID, IS, precision/recall through torch-fidelity), latent-space
diagnostics against the prior, and disentanglement scores. See each module's docstring for units."""

from genlab.metrics.disentanglement import dci, factor_vae_score, mig, sample_codes
from genlab.metrics.extractors import ExtractorUnavailable, known_extractors
from genlab.metrics.fid import (
    RealReference,
    cache_key,
    extract_features,
    gather_samples,
    sample_metrics,
)
from genlab.metrics.prior import (
    ExPostGMM,
    active_units,
    kl_aggregate_bounds,
    kl_aggregate_posterior,
    mmd,
)

__all__ = [
    "ExPostGMM",
    "ExtractorUnavailable",
    "RealReference",
    "active_units",
    "cache_key",
    "dci",
    "extract_features",
    "factor_vae_score",
    "gather_samples",
    "kl_aggregate_bounds",
    "kl_aggregate_posterior",
    "known_extractors",
    "mig",
    "mmd",
    "sample_codes",
    "sample_metrics",
]
