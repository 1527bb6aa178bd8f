"""`python -m cifar.table1` on the stand-in, end to end at a small size, and its resume."""
import json

import pytest

from cifar import table1
from helpers import one_line_error


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


@pytest.mark.parametrize("argv,message", [
    (["--nfe", "11"], "argument --nfe: 11: solver 'dpm2' cannot spend exactly 11 model evaluations"),
    (["--nfe", "6"], "argument --nfe: 6: solver 'adams4' cannot spend exactly 6 model evaluations (it spends 4, 8, 9"),
    (["--nfe", "8", "8"], "argument --nfe: give each budget once, got 8 8"),
    (["--samples", "-1"], "argument --samples: must be an integer >= 1, got '-1'"),
    (["--samples", "0"], "argument --samples: must be an integer >= 1, got '0'"),
    (["--samples", "1"], "argument --samples: a Frechet distance needs at least 2 samples, got 1"),
    (["--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["--out", __file__], "argument --out: " + __file__ + " is a file, not a folder"),
])
def test_mistakes_stop_at_the_door(argv, message, capsys):
    one_line_error(table1.main, argv, capsys, message)


def test_a_folder_made_with_other_settings_is_refused(tmp_path, capsys):
    args = ["--nfe", "8", "--samples", "20", "--batch", "10", "--out", str(tmp_path)]
    table1.main(args + ["--seed", "3"])
    capsys.readouterr()
    one_line_error(table1.main, args + ["--seed", "4"], capsys, "holds work made with other settings: seed=3 (now 4)")
    # more samples in the same folder: the last, partial shard is made again, nothing is counted twice
    table1.main(["--nfe", "8", "--samples", "25", "--batch", "10", "--out", str(tmp_path), "--seed", "3"])
    assert json.loads((tmp_path / "table1.json").read_text())["samples"] == 25
    from cifar.generate import load_samples
    for folder in (tmp_path / "samples" / "stand-in").iterdir():
        assert len(load_samples(folder, 25, 10)) == 25
