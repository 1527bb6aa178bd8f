"""Training-set statistics files for FID (score_sde's and pytorch-fid's formats); the distance
itself is :mod:`adjointdpm.tools.frechet`."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from adjointdpm.tools.frechet import feature_statistics


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.npz`` holding ``mu`` and ``sigma`` (pytorch-fid) or raw ``pool_3``
    activations (score_sde's ``cifar10_stats.npz``), without unpickling anything; a file that
    is not such statistics (garbage, empty, NaN, shapes that do not fit) is refused naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"statistics file {path} is not a file (e.g. score_sde's cifar10_stats.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = sorted(data)
            if "mu" in data and "sigma" in data:
                mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
            elif "pool_3" in data:
                pool = np.asarray(data["pool_3"], np.float64)
                if pool.ndim != 2 or len(pool) < 2:
                    raise ValueError(f"statistics file {path}: pool_3 must be (samples >= 2, features), "
                                     f"got {pool.shape}")
                mu, sigma = feature_statistics(pool)
            else:
                raise ValueError(f"statistics file {path} has neither 'mu'/'sigma' nor 'pool_3' (keys: {keys})")
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"statistics file {path} is not a readable .npz ({type(err).__name__})") from None
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"statistics file {path} is not a readable .npz of numbers ({err})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"statistics file {path}: mu must be (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"statistics file {path} holds non-finite values (nan or inf)")
    return mu, sigma
