"""The resumable training loop's EMA against its closed forms."""
import math

import pytest
import torch

from adjointdpm.tools.training import Training


def _ema_of_a_weight_that_jumps_to_zero(tmp_path, warmup: bool, steps: int) -> float:
    """A weight starting at 1 that the first SGD step sends to 0 for good (loss p^2/2, lr 1): after
    ``n`` steps its EMA is exactly the initial weight's remaining share, the product of the decays."""
    p = torch.ones((), dtype=torch.float64)
    training = Training({"p": p}, torch.optim.SGD([p], lr=1.0), tmp_path / "t.pt", save_every=10**6,
                        ema_decay=0.999, ema_warmup=warmup)
    training.run(steps, lambda step: 0.5 * p.square(), progress=False)
    return float(training.ema["p"])


@pytest.mark.parametrize("steps", [1, 30, 300])
def test_score_sde_s_warmup_leaves_the_closed_form_share_of_the_initial_weights(tmp_path, steps):
    # prod_{k=1..n} (1 + k) / (10 + k) = 10! (n + 1)! / (n + 10)!  while (1 + k) / (10 + k) < 0.999
    closed = math.exp(math.lgamma(11) + math.lgamma(steps + 2) - math.lgamma(steps + 11))
    assert _ema_of_a_weight_that_jumps_to_zero(tmp_path / "w", True, steps) == pytest.approx(closed, rel=1e-12)
    # without it, a constant decay keeps 0.999^n of them (2.2 % after 3,800 steps)
    assert _ema_of_a_weight_that_jumps_to_zero(tmp_path / "c", False, steps) == pytest.approx(0.999 ** steps, rel=1e-12)
