import pytest
import torch

from adjointdpm import GaussianMixture, VPSchedule
from toy import three_modes, train_eps_mlp


@pytest.mark.parametrize("times", ["per-sample", "shared"])  # the two code paths of the variances
def test_mixture_eps_is_minus_sigma_times_the_score(times):
    sched = VPSchedule.cosine()
    mix = three_modes(sched).double()
    x = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
    if times == "per-sample":
        t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.01
    else:
        t = torch.full((64,), 0.37, dtype=torch.float64)
    cond = torch.randn(64, 2, dtype=torch.float64)
    score, = torch.autograd.grad(mix.log_prob_t(x, t, cond).sum(), x)
    assert torch.allclose(mix(x, t, cond), -sched.sigma(t)[:, None] * score, atol=1e-10)


def test_mixture_density_integrates_to_one_and_samples_match_it():
    mix = three_modes(VPSchedule.linear()).double()
    g = torch.linspace(-6, 6, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    cell = float(g[1] - g[0]) ** 2
    with torch.no_grad():
        assert abs(float(mix.log_prob(grid).exp().sum()) * cell - 1) < 1e-6
    x = mix.sample_data(200_000, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(mix.logits, 0)
    mean = (p[:, None] * mix.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.02)


def test_mlp_learns_the_mixture_epsilon():
    sched = VPSchedule.linear()
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [[0.3, 0.3], [0.3, 0.3]], sched)
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(2048, generator=gen) * 0.9 + 0.05
    x = sched.alpha(t).float()[:, None] * mix.sample_data(2048, generator=gen) + \
        sched.sigma(t).float()[:, None] * torch.randn(2048, 2, generator=gen)

    def error(model):
        with torch.no_grad():
            return float(((model(x, t) - mix(x, t)) ** 2).mean())
    untrained = train_eps_mlp(lambda n, c, g: mix.sample_data(n, generator=g), sched, iters=0, progress=False)
    trained = train_eps_mlp(lambda n, c, g: mix.sample_data(n, generator=g), sched, iters=400, progress=False)
    assert error(trained) < 0.1 * error(untrained)
