"""Metrics: sample quality (FID, KID, IS, precision/recall through torch-fidelity), latent-space
diagnostics against the prior, disentanglement scores, the RBM's log partition function (AIS),
PSNR, the linear probes' fit, and class-conditional scores (intra-FID, class accuracy). See each module's docstring for units."""

from genlab.metrics.ais import ais_log_z, ais_schedule, exact_log_z
from genlab.metrics.conditional import class_accuracy, frechet_distance, intra_fid
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
from genlab.metrics.probe import linear_probe_accuracy, probe_accuracy
from genlab.metrics.psnr import psnr

__all__ = [
    "ExPostGMM",
    "ExtractorUnavailable",
    "RealReference",
    "active_units",
    "ais_log_z",
    "ais_schedule",
    "cache_key",
    "class_accuracy",
    "dci",
    "exact_log_z",
    "extract_features",
    "factor_vae_score",
    "frechet_distance",
    "gather_samples",
    "intra_fid",
    "kl_aggregate_bounds",
    "kl_aggregate_posterior",
    "known_extractors",
    "linear_probe_accuracy",
    "mig",
    "mmd",
    "probe_accuracy",
    "psnr",
    "sample_codes",
    "sample_metrics",
]
