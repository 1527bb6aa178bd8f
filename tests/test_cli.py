"""Arguments checked at the door: one line naming the argument, exit status 2, no traceback."""
import argparse

import pytest
import torch

from adjointdpm import cli


def _parser():
    p = cli.Parser(prog="cmd")
    p.add_argument("--batch", type=cli.positive_int, default=1)
    p.add_argument("--repeats", type=cli.nonnegative_int, default=0)
    p.add_argument("--tau", type=cli.positive_float, default=1.0)
    p.add_argument("--scale", type=cli.finite_float, default=1.0)
    p.add_argument("--device", type=cli.device, default="cpu")
    p.add_argument("--out", type=cli.folder, default=".")
    p.add_argument("--stats", type=cli.existing_file)
    return p


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["--batch", "1.5"], "argument --batch: must be an integer, got '1.5'"),
    (["--repeats", "-1"], "argument --repeats: must be an integer >= 0, got '-1'"),
    (["--tau", "nan"], "argument --tau: must be a finite number, got 'nan'"),
    (["--tau", "0"], "argument --tau: must be a number > 0, got '0'"),
    (["--scale", "inf"], "argument --scale: must be a finite number, got 'inf'"),
    (["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["--out", __file__], "is a file, not a folder"),
    (["--stats", "no/such.npz"], "argument --stats: no/such.npz does not exist"),
])
def test_bad_values_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and lines[0].startswith("cmd: error: ") and message in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_at_the_door():
    with pytest.raises(argparse.ArgumentTypeError, match="this machine has no CUDA device"):
        cli.device("cuda")


def test_work_errors_become_one_line(capsys):
    parser = _parser()
    with pytest.raises(SystemExit) as err, cli.one_line_errors(parser):
        raise ValueError("statistics file x.npz has neither 'mu'/'sigma' nor 'pool_3'")
    assert err.value.code == 2
    assert capsys.readouterr().err == "cmd: error: statistics file x.npz has neither 'mu'/'sigma' nor 'pool_3'\n"
    with pytest.raises(KeyError), cli.one_line_errors(parser):  # a bug keeps its traceback
        raise KeyError("bug")
