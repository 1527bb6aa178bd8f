"""`python -m cifar.table1` on the stand-in, end to end at a small size, and its resume."""
import json

import pytest
import torch

from cifar import table1
from helpers import one_line_error


def test_standin_table_end_to_end_and_resume(tmp_path):
    args = ["--nfe", "10", "20", "--samples", "100", "--batch", "25", "--out", str(tmp_path),
            "--grids", "uniform", "logSNR"]
    table1.main(args)
    first = json.loads((tmp_path / "table1.json").read_text())
    assert "STAND-IN" in (tmp_path / "table1.md").read_text()
    rows = {(r["grid"], r["nfe"], r["sampler"]): r for r in first["rows"]}
    assert len(rows) == len(first["rows"]) == 2 * 2 * 3  # every row names its grid
    for grid in ("uniform", "logSNR"):
        for name in table1.SAMPLERS:  # more evaluations, closer to the exact flow map
            assert rows[(grid, 20, name)]["rmse_vs_fine"] < rows[(grid, 10, name)]["rmse_vs_fine"]
            # the grid reaches the sampler: the same sampler on another grid ends elsewhere
            assert rows[("uniform", 10, name)]["rmse_vs_fine"] != rows[("logSNR", 10, name)]["rmse_vs_fine"]
        # at NFE 10 the reparameterized ODE beats the original one (in median per-image error)
        assert rows[(grid, 10, "eq. 10 + AB4")]["rmse_vs_fine"] < rows[(grid, 10, "eq. 4 + AB4")]["rmse_vs_fine"]
    # where the error is made: after the last step each sampler's error is its cell's (to the
    # reference's own error: 16 of the cell's images, against the converged solve the floor uses)
    for grid, per_sampler in first["trajectory"]["errors"].items():
        for name, steps in per_sampler.items():
            assert len(steps) == rows[(grid, 10, name)]["steps"] and steps[-1]["t"] == table1.T_END
            assert steps[-1]["rmse"] == pytest.approx(rows[(grid, 10, name)]["rmse_vs_fine"], rel=0.5)
    # a rerun finds every shard finished and reproduces the table's numbers
    shards = sorted(tmp_path.glob("samples/*/*/*/shard_*.pt"))
    assert len(shards) == 2 * 2 * 3 * 4
    stamps = [p.stat().st_mtime_ns for p in shards]
    table1.main(args)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    again = json.loads((tmp_path / "table1.json").read_text())
    for a, b in zip(first["rows"], again["rows"]):
        assert a["distance"] == pytest.approx(b["distance"], rel=1e-9)


@pytest.mark.parametrize("argv,message", [
    (["--nfe", "11"], "argument --nfe: 11: solver 'dpm2' cannot spend exactly 11 model evaluations"),
    (["--nfe", "6"], "argument --nfe: 6: solver 'adams4' cannot spend exactly 6 model evaluations (it spends 4, 8, 9"),
    (["--nfe", "8", "8"], "argument --nfe: give each budget once, got 8 8"),
    (["--grids", "cosine"], "argument --grids: invalid choice: 'cosine'"),
    (["--grids", "uniform", "uniform"], "argument --grids: give each grid once, got uniform uniform"),
    (["--samples", "-1"], "argument --samples: must be an integer from 1 to 1,000,000"),
    (["--samples", "0"], "argument --samples: must be an integer from 1 to 1,000,000"),
    (["--samples", "1"], "argument --samples: a Frechet distance needs at least 2 samples, got 1"),
    (["--batch", "0"], "argument --batch: must be an integer from 1 to 10,000"),
    (["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["--out", __file__], "argument --out: " + __file__ + " is a file, not a folder"),
])
def test_mistakes_stop_at_the_door(argv, message, capsys):
    one_line_error(table1.main, argv, capsys, message)


def test_a_folder_made_with_other_settings_is_refused(tmp_path, capsys):
    args = ["--nfe", "8", "--samples", "20", "--batch", "10", "--out", str(tmp_path), "--grids", "logSNR"]
    table1.main(args + ["--seed", "3"])
    capsys.readouterr()
    one_line_error(table1.main, args + ["--seed", "4"], capsys, "holds work made with other settings: seed=3 (now 4)")
    # more samples in the same folder: the last, partial shard is made again, nothing is counted twice
    table1.main(["--nfe", "8", "--samples", "25", "--batch", "10", "--out", str(tmp_path), "--grids", "logSNR",
                 "--seed", "3"])
    assert json.loads((tmp_path / "table1.json").read_text())["samples"] == 25
    from cifar.generate import read_shards
    folders = sorted((tmp_path / "samples" / "stand-in").glob("*/*"))
    assert len(folders) == len(table1.SAMPLERS)  # one cell per sampler on the one grid
    for folder in folders:
        assert len(read_shards(folder, 25, 10)[0]) == 25


def _row(grid, nfe, sampler, rmse, fid, spread=0.0):
    return {"grid": grid, "nfe": nfe, "sampler": sampler, "rmse_vs_fine": rmse, "distance": fid, "fid_spread": spread}


def test_the_sentences_say_eq_10_ahead_exactly_when_the_numbers_do():
    rows = [_row("uniform", 10, "eq. 4 + AB4", 0.2, 5.0, 0.1), _row("uniform", 10, "eq. 10 + AB4", 0.1, 4.0, 0.1),
            _row("uniform", 10, "DPM-Solver", 0.3, 6.0, 0.1),
            _row("uniform", 20, "eq. 4 + AB4", 0.01, 3.0, 0.5), _row("uniform", 20, "eq. 10 + AB4", 0.02, 3.5, 0.5),
            _row("uniform", 20, "DPM-Solver", 0.9, 3.0, 0.5),
            _row("quadratic", 10, "eq. 4 + AB4", 0.05, 5.0), _row("quadratic", 10, "eq. 10 + AB4", 0.06, 4.0),
            _row("quadratic", 10, "DPM-Solver", 0.07, 6.0)]
    text = table1.ordering(rows, "uniform")
    assert "NFE 10: eq. 10 ahead in the sampler's error" in text and "eq. 10 ahead in FID" in text
    # 3.5 - 3.0 = 0.5 <= twice the spread: a tie in FID, while the error says eq. 4
    assert "NFE 20: eq. 4 ahead in the sampler's error" in text and "a tie in FID (eq. 10 3.5, eq. 4 3" in text
    assert "NFE 10: eq. 4 ahead in the sampler's error" in table1.ordering(rows, "quadratic")
    assert "eq. 4 ahead in FID" not in table1.ordering(rows, "quadratic")  # 4.0 < 5.0 with no spread: eq. 10
    summary = table1.summary(rows, ["uniform", "quadratic"])
    assert "on the uniform grid at NFE 10; on the quadratic grid at no NFE" in summary
    assert "eq. 4 + AB4: uniform at NFE 10, uniform at NFE 20" not in summary  # NFE 10's best eq. 4 is quadratic
    assert "eq. 4 + AB4: quadratic at NFE 10, uniform at NFE 20" in summary
    winners = table1.winners(rows, "uniform", failed_above=0.5)
    assert winners == ("Lowest error: at NFE 10 eq. 10 + AB4 (RMSE 0.1); at NFE 20 eq. 4 + AB4 (RMSE 0.01), and "
                       "DPM-Solver failed.")


@pytest.mark.parametrize("spacing", table1.GRIDS)
def test_each_grids_first_steps_are_its_grid_to_that_time(spacing):
    """What the trajectory errors rest on: the first i steps of an N-step grid are the i-step grid to t_i."""
    schedule = table1.VPSchedule.linear()
    full = schedule.grid(7, spacing)
    for i in range(1, 8):
        assert torch.allclose(schedule.grid(i, spacing, t_end=float(full[i])), full[:i + 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("spacing", table1.GRIDS)
def test_trajectory_errors_follow_the_converged_solve_piece_by_piece_to_the_exact_flow(spacing):
    """errors_along on a single Gaussian, whose flow map is closed-form: at each of a 10-step grid's times the
    converged path it follows piece by piece is as close to the exact flow map as the floor's own solve from the
    start to that time, at fewer than half of those solves' evaluations over the ten times (measured: 427 to 478,
    the sampler's own steps included, against 1200); each reported error is the sampler's distance to the exact
    state, to within the path's own error."""
    from adjointdpm.trajectory import errors_along, median_rmse
    from helpers import MEAN, SCALE, gaussian, noise
    from toy import flow_map
    schedule = table1.VPSchedule.linear()
    model, x_T = gaussian(schedule), noise(64)
    mean, log_scale = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(SCALE, dtype=torch.float64).log()
    sampler = dict(steps=10, solver="adams4", space="reparam", spacing=spacing)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    cache = {}
    along = errors_along(model, x_T, schedule, sampler, table1.FLOOR, cache)
    assert [s["t"] for s in along] == sorted(cache, reverse=True) and len(along) == 10
    calls_along, calls_floor = len(calls), 0  # the former counts the sampler's prefixes too
    for i, step in enumerate(along):
        exact = flow_map(x_T, mean, log_scale, schedule, 1.0, step["t"])
        path_error = float((cache[step["t"]] - exact).abs().max())
        before = len(calls)
        floor = table1.sample(model, x_T, schedule, **dict(table1.FLOOR, t_end=step["t"]))
        calls_floor += len(calls) - before
        assert path_error <= 1.1 * float((floor - exact).abs().max()) + 1e-12
        x = table1.sample(model, x_T, schedule, **dict(sampler, steps=i + 1, t_end=step["t"]))
        assert abs(step["rmse"] - median_rmse(x, exact)) <= path_error  # a per-image RMSE moves by at most that
    assert calls_along < calls_floor / 2
    with pytest.raises(ValueError, match=r"even in lambda \(spacing='logSNR'\), got 'uniform'"):
        errors_along(model, x_T, schedule, sampler, dict(table1.FLOOR, spacing="uniform"))
