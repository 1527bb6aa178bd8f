"""`python -m cifar.table1` on the stand-in, end to end at a small size, and its resume."""
import json

import pytest

from cifar import table1


def test_standin_table_end_to_end_and_resume(tmp_path):
    args = ["--nfe", "10", "20", "--samples", "100", "--batch", "50", "--out", str(tmp_path)]
    table1.main(args)
    first = json.loads((tmp_path / "table1.json").read_text())
    assert "STAND-IN" in (tmp_path / "table1.md").read_text()
    rows = {(r["nfe"], r["sampler"]): r for r in first["rows"]}
    for name in table1.SAMPLERS:  # more evaluations, closer to the exact flow map
        assert rows[(20, name)]["rmse_vs_fine"] < rows[(10, name)]["rmse_vs_fine"]
    # at NFE 10 the reparameterized ODE beats the original one (in median per-image error)
    assert rows[(10, "eq. 10 + AB4")]["rmse_vs_fine"] < rows[(10, "eq. 4 + AB4")]["rmse_vs_fine"]
    # a rerun finds every shard finished and reproduces the table's numbers
    shards = sorted(tmp_path.glob("samples/*/shard_*.pt"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    table1.main(args)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    again = json.loads((tmp_path / "table1.json").read_text())
    for a, b in zip(first["rows"], again["rows"]):
        assert a["distance"] == pytest.approx(b["distance"], rel=1e-9)


def test_bad_nfe():
    with pytest.raises(SystemExit, match="--nfe 11: solver 'dpm2' cannot spend exactly 11 model evaluations"):
        table1.main(["--nfe", "11"])
    with pytest.raises(SystemExit, match="--nfe 6: solver 'adams4' cannot spend exactly 6 .* 4, 8, 9, 10"):
        table1.main(["--nfe", "6"])
