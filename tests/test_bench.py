"""`python -m toy.bench --quick`: every case in a fresh process, files written, memory behaves."""
import json

from toy import bench


def test_quick_bench(tmp_path):
    bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").exists() and (tmp_path / "bench.png").stat().st_size > 0
    peak = {(r["strategy"], r["steps"]): r["peak_bytes"] for r in data["rows"]}
    backprop_growth = peak[("Backprop", 20)] - peak[("Backprop", 10)]
    adjoint_growth = peak[("Adjoint", 20)] - peak[("Adjoint", 10)]
    # Backprop keeps ~1.5 MiB of activations per evaluation (40 more evaluations); the adjoint keeps none
    assert backprop_growth > 20 * 2**20
    assert abs(adjoint_growth) < backprop_growth / 4
    nfe = {(r["strategy"], r["steps"]): (r["nfe_forward"], r["nfe_backward"]) for r in data["rows"]}
    assert nfe[("Adjoint", 20)] == (80, 80) and nfe[("Backprop", 10)] == (40, 40)
    # the SDE sampler: the adjoint that re-solves the SDE backwards keeps no state per step either
    sde_growth = peak[("SDE Backprop", 20)] - peak[("SDE Backprop", 10)]
    assert abs(peak[("SDE Adjoint (re-solved)", 20)] - peak[("SDE Adjoint (re-solved)", 10)]) < sde_growth / 4
    sde = {r["steps"]: r for r in data["rows"] if r["strategy"] == "SDE Adjoint (re-solved)"}
    assert sde[10]["err_x_T"] is None and sde[10]["nfe_forward"] == 10  # no fine reference on an SDE path
