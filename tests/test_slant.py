"""The slant instrument (handwritten.slant) against closed forms: a sheared bar has the shear's angle, a
Gaussian ink blob's slant is atan(Sigma_xy / Sigma_yy) of its covariance, and a shear adds tan(angle) to it."""
import math

import pytest
import torch

from handwritten.slant import deskew, shear, slant


def blob(cov, size=64):
    """A Gaussian ink blob (peak 1) of covariance ``cov`` (pixels; x right, y up) at the image centre."""
    c = (size - 1) / 2
    y = (c - torch.arange(size, dtype=torch.float64))[:, None]
    x = (torch.arange(size, dtype=torch.float64) - c)[None, :]
    p = torch.stack([x.expand(size, size), y.expand(size, size)], -1)
    inv = torch.linalg.inv(torch.as_tensor(cov, dtype=torch.float64))
    g = torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", p, inv, p))
    return g.expand(1, 3, size, size).clone()


@pytest.mark.parametrize("degrees", [-25.0, 0.0, 10.0, 20.0, 35.0])
def test_a_sheared_vertical_bar_has_the_shears_angle(degrees):
    bar = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    bar[..., 4:28, 15:17] = 1
    assert float(slant(shear(bar, degrees))) == pytest.approx(degrees, abs=1e-3)


@pytest.mark.parametrize("cov", [[[9.0, 0.0], [0.0, 36.0]], [[16.0, 6.0], [6.0, 30.0]], [[12.0, -5.0], [-5.0, 25.0]]])
def test_a_blobs_slant_is_its_covariances_and_a_shear_adds_its_tangent(cov):
    image = blob(cov)
    expected = math.degrees(math.atan(cov[0][1] / cov[1][1]))
    assert float(slant(image)) == pytest.approx(expected, abs=0.05)
    for degrees in (-15.0, 20.0):
        k = math.tan(math.radians(degrees))
        # the shear (x, y) -> (x + k y, y) maps the covariance to S cov S^T: Sigma_xy + k Sigma_yy over Sigma_yy
        sheared = math.degrees(math.atan((cov[0][1] + k * cov[1][1]) / cov[1][1]))
        assert float(slant(shear(image, degrees))) == pytest.approx(sheared, abs=0.05)
        assert abs(float(slant(deskew(shear(image, degrees))))) < 0.05


def test_refusals():
    with pytest.raises(ValueError, match="within 80 degrees"):
        shear(torch.zeros(1, 3, 8, 8), 85)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        slant(torch.zeros(8, 8))
