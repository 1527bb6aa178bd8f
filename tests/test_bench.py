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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bench.lock", "bench.json", "bench.md", "bench.png"]


def test_an_interrupted_bench_resumes_without_measuring_a_finished_case_again(tmp_path, monkeypatch):
    """The set-up and each finished case live under --out until the tables are written; a rerun after an
    interruption measures only what was left (the measurement itself is test_quick_bench's)."""
    import pytest
    import torch
    made, measured, interrupted = [], [], []
    monkeypatch.setattr(bench, "prepare", lambda setup, *args: (made.append(1), torch.save(0, setup / "reference.pt")))

    def case(module, worker, setup, name, steps, *rest, **where):
        if len(measured) == 3 and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        measured.append((name, steps))
        return {"strategy": name, "steps": steps, "err_x_T": 0.1, "err_theta": 0.1, "vs_checkpoint_x_T": 0.0,
                "vs_checkpoint_theta": 0.0, "seconds": 1.0, "peak_bytes": 1, "nfe_forward": 1, "nfe_backward": 1,
                "device": "cpu"}
    monkeypatch.setattr(bench, "run_in_fresh_process", case)
    with pytest.raises(KeyboardInterrupt):
        bench.run(tmp_path, quick=True, repeats=1, device="cpu")
    assert len(measured) == 3 and (tmp_path / ".bench-work").is_dir()
    monkeypatch.setattr(bench, "write", lambda rows, out, meta: "")  # the figure needs real rows
    rows = bench.run(tmp_path, quick=True, repeats=1, device="cpu")
    assert len(measured) == 8 and len(set(measured)) == 8 and len(made) == 1  # each case once, the set-up once
    assert [(r["strategy"], r["steps"]) for r in rows] == measured and not (tmp_path / ".bench-work").exists()
