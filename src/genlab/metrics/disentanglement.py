"""Disentanglement scores against known generative factors (MIG, FactorVAE score, DCI).

The definitions follow disentanglement_lib (Locatello et al. 2019) and its default sizes; genlab's
code is its own. All scores are unitless, in [0, 1], higher is more disentangled.

Inputs come in two forms:
- precomputed arrays: codes [N, D] (float, e.g. posterior means) and factors [N, K] (integer level
  indices), for MIG and DCI;
- a generative pair for the FactorVAE score, which needs batches with one factor held fixed:
  `factor_sizes` (levels per factor; factors are drawn uniformly and independently),
  `render(factors LongTensor [B, K]) -> observations` and `encode(observations) -> codes [B, D]`.
  `sample_codes` turns the same pair into arrays for MIG and DCI. With genlab's dSprites:

      from genlab.data import dsprites
      encode = lambda x: vae.encode(x.float().div(255).to(device))[0]   # posterior means
      codes, factors = sample_codes(encode, dsprites.FACTOR_SIZES, dsprites.render, 10_000)
      mig(codes, factors); factor_vae_score(encode, dsprites.FACTOR_SIZES, dsprites.render)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats
import torch
from sklearn.metrics import mutual_info_score

from genlab.config import require_choice

Encode = Callable[[torch.Tensor], torch.Tensor]
Render = Callable[[torch.Tensor], torch.Tensor]


def _sample_factors(rng: np.random.Generator, factor_sizes: Sequence[int], n: int) -> np.ndarray:
    return np.stack([rng.integers(0, s, size=n) for s in factor_sizes], axis=1)


def _codes(encode: Encode, render: Render, factors: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = encode(render(torch.from_numpy(factors).long()))
    return z.detach().double().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)


def sample_codes(encode: Encode, factor_sizes: Sequence[int], render: Render, n: int, seed: int = 0,
                 batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """n uniformly drawn factor combinations and their codes: (codes [n, D], factors [n, K])."""
    rng = np.random.default_rng(seed)
    factors = _sample_factors(rng, factor_sizes, n)
    codes = np.concatenate([_codes(encode, render, factors[i : i + batch_size])
                            for i in range(0, n, batch_size)])
    return codes, factors


# -- MIG -----------------------------------------------------------------------------------------------
def discretize(codes: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Each code dimension cut into n_bins equal-width bins over its observed range."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], n_bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def mutual_info_matrix(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Discrete mutual information I(code_j; factor_k) in nats, [D, K], codes binned as in MIG."""
    binned, factors = discretize(codes, n_bins), np.asarray(factors)
    return np.array([[mutual_info_score(factors[:, k], binned[:, j]) for k in range(factors.shape[1])]
                     for j in range(binned.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018): for each factor, the gap between the two code
    dimensions most informative about it, divided by the factor's entropy; averaged over factors.

    disentanglement_lib's setting: 10,000 points, 20 equal-width bins per code dimension, sklearn's
    mutual_info_score. Factors constant in the sample (zero entropy) are left out of the average.
    """
    factors = np.asarray(factors)
    m = mutual_info_matrix(codes, factors, n_bins)
    entropy = np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    varies = entropy > 0
    return float(np.mean((top[0] - second)[varies] / entropy[varies]))


# -- FactorVAE score -------------------------------------------------------------------------------------
def factor_vae_score(encode: Encode, factor_sizes: Sequence[int], render: Render, seed: int = 0,
                     batch_size: int = 64, n_train: int = 10_000, n_eval: int = 5_000,
                     n_variance: int = 10_000, prune_threshold: float = 0.0,
                     votes_per_call: int = 32) -> dict[str, float]:
    """FactorVAE disentanglement score (Kim & Mnih 2018), as in disentanglement_lib.

    Codes are divided by their standard deviation over n_variance random points (dimensions with
    std <= prune_threshold, or zero, are left out). One vote: pick a factor k, draw batch_size
    points that share the value of factor k, and vote (k, the dimension with the least normalised
    variance). A majority-vote classifier maps each dimension to the factor it won most often;
    the score is that classifier's accuracy on n_eval fresh votes (`eval_accuracy`; on the
    training votes: `train_accuracy`). Chance level is about 1 / K.
    `votes_per_call` votes are rendered and encoded together, which changes nothing but speed.
    """
    rng = np.random.default_rng(seed)
    k_factors = len(factor_sizes)
    codes, _ = sample_codes(encode, factor_sizes, render, n_variance, seed=int(rng.integers(2**31)))
    variance = codes.var(axis=0, ddof=1)
    active = (np.sqrt(variance) >= prune_threshold) & (variance > 0)
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    active_idx = np.flatnonzero(active)

    def votes(n_votes: int) -> np.ndarray:
        table = np.zeros((k_factors, len(variance)), dtype=np.int64)
        for start in range(0, n_votes, votes_per_call):
            v = min(votes_per_call, n_votes - start)
            fixed = rng.integers(0, k_factors, size=v)
            f = _sample_factors(rng, factor_sizes, v * batch_size).reshape(v, batch_size, k_factors)
            f[np.arange(v), :, fixed] = f[np.arange(v), 0, fixed][:, None]
            z = _codes(encode, render, f.reshape(-1, k_factors)).reshape(v, batch_size, -1)
            local = z.var(axis=1, ddof=1)[:, active_idx] / variance[active_idx]
            np.add.at(table, (fixed, active_idx[local.argmin(axis=1)]), 1)
        return table

    train_votes = votes(n_train)
    classifier = train_votes.argmax(axis=0)  # the factor each dimension votes for most
    dims = np.arange(len(variance))
    eval_votes = votes(n_eval)
    return {
        "train_accuracy": float(train_votes[classifier, dims].sum() / train_votes.sum()),
        "eval_accuracy": float(eval_votes[classifier, dims].sum() / eval_votes.sum()),
        "num_active_dims": int(active.sum()),
    }


# -- DCI ---------------------------------------------------------------------------------------------
def importance_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                      factors_test: np.ndarray, model: str = "gbt", seed: int = 0
                      ) -> tuple[np.ndarray, float, float]:
    """|feature importance| of each code dimension for predicting each factor, [D, K], and the
    predictors' mean accuracy on the train and the test points.

    model: `gbt` is disentanglement_lib's choice, sklearn's GradientBoostingClassifier with default
    settings (100 stages of depth-3 trees per class; slow for factors with many levels, e.g. the
    32 positions of dSprites); `forest` is a lighter RandomForestClassifier (100 bagged trees of
    depth <= 8 that consider every dimension at each split, so an irrelevant dimension is not
    picked for lack of a better one; parallel), whose impurity importances are not the library's.
    """
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    require_choice(model, "dci model", ("gbt", "forest"))
    factors_train, factors_test = np.asarray(factors_train), np.asarray(factors_test)
    imp = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    acc_train, acc_test = [], []
    for k in range(factors_train.shape[1]):
        if model == "gbt":
            clf = GradientBoostingClassifier(random_state=seed)
        else:
            clf = RandomForestClassifier(n_estimators=100, max_depth=8, max_features=None, n_jobs=-1,
                                         random_state=seed)
        clf.fit(codes_train, factors_train[:, k])
        imp[:, k] = np.abs(clf.feature_importances_)
        acc_train.append(np.mean(clf.predict(codes_train) == factors_train[:, k]))
        acc_test.append(np.mean(clf.predict(codes_test) == factors_test[:, k]))
    return imp, float(np.mean(acc_train)), float(np.mean(acc_test))


def dci(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
        factors_test: np.ndarray, model: str = "gbt", seed: int = 0) -> dict[str, float]:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018), as in
    disentanglement_lib (10,000 train and 5,000 test points there).

    From the importance matrix R [D, K]: disentanglement = sum_j rho_j (1 - H_K(R_j. / sum R_j.)),
    rho_j = code j's share of all importance; completeness = the same per factor over codes,
    with entropies in base K and D respectively. informativeness_train / _test are the
    predictors' classification *accuracies* (disentanglement_lib's convention, higher is better),
    not errors.
    """
    imp, acc_train, acc_test = importance_matrix(codes_train, factors_train, codes_test, factors_test,
                                                 model, seed)
    return {
        "disentanglement": _weighted_one_minus_entropy(imp),
        "completeness": _weighted_one_minus_entropy(imp.T),
        "informativeness_train": acc_train,
        "informativeness_test": acc_test,
    }


def _weighted_one_minus_entropy(imp: np.ndarray) -> float:
    """sum over rows i of (row i's share of the total) * (1 - entropy of row i in base n_columns)."""
    per_row = 1.0 - scipy.stats.entropy(imp.T + 1e-11, base=imp.shape[1])
    weight = imp.sum(axis=1) / imp.sum() if imp.sum() > 0 else np.full(len(imp), 1.0 / len(imp))
    return float(np.sum(per_row * weight))
