"""The "Try it" prompts of the three tutorials, run as their answers state them, at cheap sizes (the
same problems as the notebooks' sections): an answer a run no longer confirms fails here."""
import torch

from adjointdpm import Adjoint, Backprop, Checkpoint, GaussianMixture, VPSchedule, sample
from adjointdpm.tools.memory import saved_bytes_during
from toy import eight_modes, flow_map, flow_map_vjp

F64 = dict(dtype=torch.float64)
SCHEDULE = VPSchedule.linear()


def test_answer_1_euler_adjoint_reaches_order_one_only_from_80_steps():
    mean, scale = torch.tensor([0.5, -1.0], **F64), torch.tensor([0.3, 1.5], **F64)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), **F64)
    target = torch.tensor([1.0, 2.0], **F64)
    exact = flow_map_vjp(x_T, mean, scale.log(), 2 * (flow_map(x_T, mean, scale.log(), SCHEDULE, 1.0, 1e-3) - target),
                         SCHEDULE, 1.0, 1e-3)["x_T"]

    def error(steps):
        model = GaussianMixture(torch.ones(1, **F64), mean[None], scale[None], SCHEDULE)
        x = x_T.clone().requires_grad_()
        ((sample(model, x, SCHEDULE, steps=steps, solver="rk4", gradient=Adjoint(solver="euler")) - target) ** 2
         ).sum().backward()
        return float((x.grad - exact).norm() / exact.norm())
    e = [error(n) for n in (10, 20, 40, 80, 160, 320)]
    assert all(0.6 < v < 1.0 for v in e[:3])                      # 0.88, 0.97, 0.70: hardly falling
    assert all(1.7 < e[i] / e[i + 1] < 2.1 for i in (3, 4))       # 0.41, 0.22, 0.11: halving, order 1


def test_answer_2_behind_rk4_the_adjoints_gap_at_10_steps_shrinks_by_two_orders():
    mixture = eight_modes(SCHEDULE, scale=0.3).double()
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), **F64)

    def gradient(strategy, solver):
        mixture.zero_grad()
        x = x_T.clone().requires_grad_()
        (sample(mixture, x, SCHEDULE, steps=10, solver=solver, gradient=strategy) ** 2).sum().backward()
        return torch.cat([x.grad.flatten(), mixture.means.grad.flatten()])
    gap = {}
    for solver in ("dpm2m", "rk4"):
        exact = gradient(Checkpoint(), solver)
        gap[solver] = float((gradient(Adjoint(30, "rk4"), solver) - exact).norm() / exact.norm())
    assert gap["dpm2m"] > 0.2 and gap["rk4"] < gap["dpm2m"] / 50  # 0.32 and 0.0041


def test_answer_3_four_times_the_batch_keeps_four_times_the_bytes():
    mix = eight_modes(SCHEDULE)

    def saved_bytes(gradient, steps, batch):  # the notebook's section 2, through the library's counter
        x = torch.randn(batch, 2, requires_grad=True)
        x0, total = saved_bytes_during(lambda: sample(mix, x, SCHEDULE, steps=steps, solver="dpm2", gradient=gradient))
        x0.sum().backward()
        return total
    for make in (Backprop, Checkpoint, Adjoint):
        for steps in (5, 40):
            # 4.00x to two decimals: the times of the steps are saved too, and do not grow with the batch
            assert 3.99 < saved_bytes(make(), steps, 2048) / saved_bytes(make(), steps, 512) <= 4
    assert saved_bytes(Adjoint(), 5, 2048) == saved_bytes(Adjoint(), 40, 2048)  # flat in steps


# ---------------------------------------------------------------------------------------------
# Notebook 02's answers: its section 2 on the committed digits DDPM++, section 5's stand-in, section 6's tiny DDPM++

def _digits_errors(model, x_T, cases):
    from adjointdpm.trajectory import median_rmse
    from cifar import table1
    with torch.no_grad():
        # FLOOR, a fifth of FINE's cost, is converged to well under the errors compared here
        converged = sample(model, x_T, SCHEDULE, **table1.FLOOR)
        return {(grid, nfe): {name: median_rmse(sample(model, x_T, SCHEDULE, **table1.sampler(name, nfe, grid)), converged)
                              for name in table1.SAMPLERS} for grid, nfe in cases}


def test_nb02_answer_1_nfe_20_is_close_for_all_and_the_quadratic_grid_breaks_eq_10_at_nfe_10():
    from cifar import load_score_sde
    from cifar.generate import shard_noise
    from cifar.train_digits import EXPORT
    model = load_score_sde(EXPORT / "checkpoint.pth", "digits_ddpmpp")
    e = _digits_errors(model, shard_noise(0, 0, 500, (3, 16, 16))[:16],
                       [("logSNR", 20), ("logSNR", 10), ("quadratic", 10)])
    assert max(e["logSNR", 20].values()) < 0.05                      # 0.012, 0.028, 0.026: hard to tell apart
    quadratic = e["quadratic", 10]
    assert quadratic["eq. 10 + AB4"] > 1.0 and quadratic["DPM-Solver"] > 0.4  # 2.0 and 0.74: failed
    assert quadratic["eq. 4 + AB4"] < e["logSNR", 10]["eq. 4 + AB4"] / 2      # 0.067 against 0.21


def test_nb02_answer_3_the_standin_orders_the_samplers_its_own_way():
    from adjointdpm.trajectory import median_rmse
    from cifar import table1
    from cifar.standin import ImageMixture
    mixture = ImageMixture(SCHEDULE)
    xs = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact = sample(mixture, xs, SCHEDULE, **table1.FINE)
    e = {(grid, nfe, name): median_rmse(sample(mixture, xs, SCHEDULE, **table1.sampler(name, nfe, grid)), exact)
         for grid in ("uniform", "logSNR", "quadratic") for nfe in (10, 20) for name in table1.SAMPLERS}
    for grid, nfe in (("uniform", 10), ("logSNR", 10), ("logSNR", 20)):
        assert e[grid, nfe, "eq. 10 + AB4"] < e[grid, nfe, "eq. 4 + AB4"]
    for name in table1.SAMPLERS:  # every sampler does best on the quadratic grid
        for nfe in (10, 20):
            assert e["quadratic", nfe, name] <= min(e["uniform", nfe, name], e["logSNR", nfe, name])


def test_nb02_answer_2_behind_a_converged_sampler_the_adjoint_s_two_distances_become_one():
    """The notebook's section 6 with its 6-step sampler replaced by a converged one: 24 RK4 steps stand for
    its 100 (the sampler's error, fourth order, is then 4^4 = 256 times smaller than at 6 steps, far below
    the adjoint's own), and 96 steps for the ODE's 400."""
    from cifar import DDPMpp, ScoreSDEEps
    torch.manual_seed(0)
    tiny = ScoreSDEEps(DDPMpp("cifar10_ddpmpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(4,), image_size=8).double().eval())
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def grad_x_T(gradient, steps):
        x = z.clone().requires_grad_()
        sample(tiny, x, SCHEDULE, steps=steps, solver="rk4", gradient=gradient).square().sum().backward()
        return x.grad
    sampler_grad, ode_grad = grad_x_T(Checkpoint(), 24), grad_x_T(Checkpoint(), 96)
    for steps in (3, 12):
        g = grad_x_T(Adjoint(steps=steps), 24)
        to_ode, to_sampler = (float((g - ref).norm() / ref.norm()) for ref in (ode_grad, sampler_grad))
        assert abs(to_ode - to_sampler) < 0.1 * to_ode  # the notebook's run: 2.5e-2 and 2.5e-2, 1.7e-2 and 1.9e-2


# ---------------------------------------------------------------------------------------------
# Notebook 03's answers, on the notebook's own eight seeds (its answers quote the 32 of the ablation)

def _guided(target, lr):
    from stable_diffusion import apps
    from stable_diffusion.digits import data, experiments, load_digit_classifier
    from stable_diffusion.registry import open_model
    guide = load_digit_classifier()
    run = apps.guided_sampling(open_model("digits", "cpu"), guide, data.GENERIC, target, list(range(1000, 1008)),
                               iters=10, lr=lr, sampler=apps.Sampler(steps=8, guidance_scale=4.0), progress=False)
    out = {}
    for stage in ("before", "after"):
        read = experiments.readings(run["images"][stage], guide)
        out[stage] = {who: float((r == target).float().mean()) for who, r in read.items()}
        out[stage]["guide alone"] = float(((read["guide"] == target) & (read["svc"] != target)
                                           & (read["net"] != target)).float().mean())
    return out


def test_nb03_answers_1_and_2_a_well_drawn_target_and_a_larger_step_both_feed_the_guide_alone():
    three, nine, nine_fast = _guided(3, 0.1), _guided(9, 0.1), _guided(9, 0.3)
    # 1: toward three some images are threes to the guide alone (1 of 8 here; 19 % of 32), toward nine none (3 %)
    assert three["after"]["guide alone"] > nine["after"]["guide alone"]
    # 2: at lr 0.3 the guide gains at least as much as either judge, and the guide-only share grows
    gain = {who: nine_fast["after"][who] - nine["after"][who] for who in ("guide", "svc", "net")}
    assert gain["guide"] > 0 and gain["guide"] >= max(gain["svc"], gain["net"])
    assert nine_fast["after"]["guide alone"] > nine["after"]["guide alone"]


def test_nb03_answer_3_at_tau_0_8_more_decisions_flip_and_fewer_flipped_images_keep_their_digit():
    from handwritten.judges import judges
    from stable_diffusion import apps
    from stable_diffusion.digits import data, load_digit_classifier
    from stable_diffusion.registry import open_model
    guide, comps = load_digit_classifier(), open_model("digits", "cpu")
    classes = {k: data.prompt(k) for k in range(10) if k != data.UNSEEN}
    seen = {}
    for tau in (0.4, 0.8):  # table3's candidates, half its 6 steps of search, two audited samples per digit
        run = apps.audit_classifier(comps, guide, classes, list(range(2000, 2004)), tau=tau, iters=3, per_class=2,
                                    sampler=apps.Sampler(steps=8, guidance_scale=4.0), progress=False)
        images = run["images"]
        flipped = images["read_as"].cpu() != images["labels"].cpu()
        still = torch.stack([r == images["labels"].cpu() for r in judges().read(images["attacked"]).values()]).all(0)
        seen[tau] = {"flipped": float(flipped.float().mean()), "still": float((flipped & still).sum() / flipped.sum()),
                     "change": float((images["attacked"] - images["clean"]).abs().mean())}
    # measured: 44 % -> 94 % flipped, 62 % -> 18 % of them still the digit to every judge, change 0.13 -> 0.25
    # (at table3's 6 steps: 56 % -> 89 %, 80 % -> 19 %, 0.12 -> 0.23, at 1.6 times the cost)
    assert seen[0.8]["flipped"] > seen[0.4]["flipped"]
    assert seen[0.8]["still"] < seen[0.4]["still"] / 2
    assert seen[0.8]["change"] > 1.5 * seen[0.4]["change"]
