"""Distances between two sets of image features: FID's when the features are Inception's pool_3,
the judge-FID and KID with a digit judge's.

* :func:`frechet_distance`: between two Gaussians fitted to the sets (Heusel et al. 2017),
  ``d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``, in float64. The trace is taken from
  eigenvalues: ``S_1 S_2`` is similar to the symmetric ``S_1^(1/2) S_2 S_1^(1/2)``, so
  ``Tr (S_1 S_2)^(1/2)`` is the sum of the square roots of that matrix's eigenvalues; with
  ``S_1 = V W V^T`` restricted to its rank ``r`` (a covariance of ``n`` samples has ``r < n``), they
  are the eigenvalues of the ``r x r`` matrix ``W^(1/2) V^T S_2 V W^(1/2)``. Two symmetric
  eigensolves replace a general matrix square root (``scipy.linalg.sqrtm``): an order of magnitude
  faster at Inception's 2048 dimensions, and exact where the product is singular, where ``sqrtm``
  is not (``tests/test_fid.py``).
* :func:`kernel_distance`: KID (Binkowski et al. 2018), the unbiased estimate of the squared maximum
  mean discrepancy under the kernel ``k(a, b) = (a.b / d + 1)^3``, averaged over random subsets, by
  torch-fidelity's implementation. Unlike the Frechet distance it is unbiased at small sample sizes,
  which matters when a class has 54 reference images.
"""
from __future__ import annotations

import numpy as np


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (covariances symmetric PSD)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr (S_1 S_2)^(1/2)`` for symmetric PSD ``S_1``, ``S_2`` (the module's docstring derives it)."""
    w, v = np.linalg.eigh(sigma1)
    # S_1's numerical rank: eigenvalues under the solver's rounding of the largest are zeros
    kept = w > w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps
    root = v[:, kept] * np.sqrt(w[kept])  # S_1^(1/2) = root root^T up to the rotation V
    inner = root.T @ sigma2 @ root
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(eigenvalues.clip(min=0.0)).sum())  # rounding can leave zeros slightly negative


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``(n, d)`` features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (n >= 2, d), got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def distance_between(features_1, features_2) -> float:
    """The Frechet distance between the Gaussians fitted to two ``(n, d)`` feature sets."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


def kernel_distance(features_1, features_2, subsets: int = 100, subset_size: int | None = None,
                    seed: int = 0) -> float:
    """KID between two ``(n, d)`` feature sets: the mean over ``subsets`` random subsets of
    ``subset_size`` rows of each (default: the smaller set's size) of the unbiased squared MMD with
    the cubic polynomial kernel (torch-fidelity's ``kid_features_to_metric``)."""
    import torch
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
    a, b = np.asarray(features_1, np.float64), np.asarray(features_2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must have shapes (n >= 2, d) with the same d, got {a.shape} and {b.shape}")
    size = min(len(a), len(b)) if subset_size is None else subset_size
    result = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                    kid_subset_size=size, kid_degree=3, kid_gamma=None, kid_coef0=1,
                                    rng_seed=seed, verbose=False)
    return result[KEY_METRIC_KID_MEAN]
