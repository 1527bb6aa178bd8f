import numpy as np
import pytest

from adjointdpm.tools.frechet import feature_statistics, frechet_distance, trace_sqrt_product
from cifar.fid import load_statistics


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # commuting covariances (same eigenvectors): Tr((S1 S2)^(1/2)) = sum sqrt(l1 l2)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    l1, l2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_the_trace_term_is_exact_where_a_covariance_is_singular_and_agrees_with_a_matrix_square_root():
    from scipy import linalg
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    l1, l2 = np.array([2.0, 1.0, 0.5, 0.0, 0.0, 0.0]), rng.uniform(0.5, 2, 6)  # S1 of rank 3, as from 4 samples
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(
        np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2), rel=1e-12)
    # non-commuting, full rank: the eigenvalues of S1 S2 against scipy's general square root of the product
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) * [1, 2, 3, 1, 1, 1]
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(linalg.sqrtm(s1 @ s2).real), rel=1e-10)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product(s2, s1), rel=1e-12)


def test_statistics_files(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(500, 4))
    np.savez(tmp_path / "raw.npz", pool_3=feats)
    mu, sigma = feature_statistics(feats)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    for name in ("raw.npz", "stats.npz"):
        m, s = load_statistics(tmp_path / name)
        assert np.allclose(m, feats.mean(0)) and np.allclose(s, np.cov(feats.T))
    np.savez(tmp_path / "other.npz", x=feats)
    with pytest.raises(ValueError, match="neither 'mu'/'sigma' nor 'pool_3'"):
        load_statistics(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="is not a file"):
        load_statistics(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


@pytest.mark.parametrize("write,message", [
    (lambda p: p.write_bytes(b"not a zip at all"), "is not a readable .npz"),
    (lambda p: np.savez(p), r"has neither 'mu'/'sigma' nor 'pool_3' \(keys: \[\]\)"),  # an empty npz
    (lambda p: np.savez(p, mu=np.full(3, np.nan), sigma=np.eye(3)), "non-finite values"),
    (lambda p: np.savez(p, mu=np.zeros(3), sigma=np.eye(4)), r"mu must be \(d,\) and sigma \(d, d\)"),
    (lambda p: np.savez(p, pool_3=np.zeros(5)), r"pool_3 must be \(samples >= 2, features\)"),
])
def test_files_that_are_not_statistics_are_refused_naming_them(tmp_path, write, message):
    path = tmp_path / "stats.npz"
    write(path)
    with pytest.raises(ValueError, match=message) as err:
        load_statistics(path)
    assert str(path) in str(err.value)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    from adjointdpm.tools.frechet import kernel_distance
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 6)), rng.normal(0.3, 1.2, size=(30, 6))
    k = lambda x, y: (x @ y.T / 6 + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n = len(a)
    expected = ((kaa.sum() - np.trace(kaa)) + (kbb.sum() - np.trace(kbb))) / (n * (n - 1)) - 2 * kab.mean()
    # subsets of all n rows are permutations: every subset gives the full-sample estimate
    assert kernel_distance(a, b, subsets=3, subset_size=n) == pytest.approx(expected, rel=1e-9)
    near = kernel_distance(a, rng.normal(size=(40, 6)))
    assert abs(near) < kernel_distance(a, b + 1.0)
    with pytest.raises(ValueError, match="same d"):
        kernel_distance(a, b[:, :3])
