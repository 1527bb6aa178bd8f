"""slerp against its geometry: the ends, and a great-circle arc between orthogonal noises."""
import math

import torch

from adjointdpm.noise import slerp


def test_slerp_ends_and_the_arc_between_orthogonal_rows():
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 3.0], [-2.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(dim=1), a.norm(dim=1))  # stays on the sphere, where a line would not
    assert torch.allclose(mid[0], torch.tensor([3, 3], dtype=torch.float64) / math.sqrt(2))
    images = torch.randn(2, 4, 8, 8, dtype=torch.float64)  # latents: each sample's flattened row
    out = slerp(images, images.flip(0), 0.25)
    assert out.shape == images.shape and torch.allclose(slerp(images, images, 0.3), images)
