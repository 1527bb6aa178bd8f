"""Arguments checked at the door: one line naming the argument, exit status 2, no traceback."""
import argparse
import contextlib
import signal

import pytest
import torch

from adjointdpm.tools import cli


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


@contextlib.contextmanager
def as_from_a_terminal():
    """Inside, a child started gets Ctrl-C's default action, as a command typed at a terminal has it. A child
    inherits an ignored SIGINT (POSIX: a non-interactive shell ignores it in whatever it starts with ``&``, so
    ``make test &`` runs the whole suite so), and Python then installs no KeyboardInterrupt for it; a handler
    of this process's own is reset to the default action by exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, resumes", [("SIGINT", True), ("SIGTERM", False)])
def test_ctrl_c_and_sigterm_end_a_command_in_one_line_with_status_130(signum, resumes, tmp_path):
    import subprocess
    import sys
    import time
    script = (f"import time\nfrom adjointdpm.tools import cli\np = cli.Parser(prog='cmd')\n"
              f"with cli.one_line_errors(p, resumes={resumes}):\n"
              f"    open({str(tmp_path / 'started')!r}, 'w').close()\n    time.sleep(60)\n")
    with as_from_a_terminal():
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    while not (tmp_path / "started").exists():
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=30)
    kept = "the finished work is kept: run the same command to resume" if resumes else "this command does not resume"
    assert proc.returncode == 130 and err.count("\n") == 1 and err.startswith(f"cmd: interrupted; {kept}")


def test_a_file_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from adjointdpm.tools import files
    (tmp_path / "a_file").write_text("x")
    parser = cli.Parser(prog="cmd")
    with pytest.raises(SystemExit) as exit_:
        with cli.one_line_errors(parser):
            files.write_text(tmp_path / "a_file" / "result.md", "text")  # a file where a folder must be
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith(f"cmd: error: cannot write {tmp_path / 'a_file' / 'result.md'}:")


def test_ctrl_c_on_a_real_command_keeps_its_finished_work_and_the_rerun_resumes(tmp_path):
    """SIGINT to the bench's process group (as a terminal's Ctrl-C) while its second case runs: status 130,
    one line and no traceback; the rerun keeps the first case's record as it was and measures the second."""
    import json
    import os
    import subprocess
    import sys
    import time
    argv = [sys.executable, "-m", "stable_diffusion.bench", "--model", "tiny", "--steps", "1", "2", "--gradients",
            "adjoint", "--repeats", "0", "--out", str(tmp_path)]
    with as_from_a_terminal():
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                start_new_session=True)
    record = tmp_path / "bench.json"
    while not record.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("python -m stable_diffusion.bench: interrupted; the finished work is kept: "
                                            "run the same command to resume")
    first = json.loads(record.read_text())
    assert [r["steps"] for r in first] == [1]
    subprocess.run(argv, check=True, capture_output=True)
    both = json.loads(record.read_text())
    assert [r["steps"] for r in both] == [1, 2] and both[0] == first[0]


def test_every_command_stops_through_the_one_wrapper():
    """Each module a user runs (``python -m ...`` or a script) ends its work inside cli.one_line_errors, itself
    or through the accuracy command it delegates to: Ctrl-C, a failed write and a refusal are one line everywhere."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    commands = [p for top in ("toy", "cifar", "stable_diffusion", "shared", "notebooks") for p in (root / top).rglob("*.py")
                if 'if __name__ == "__main__"' in p.read_text()]
    assert len(commands) >= 15
    bare = [str(p.relative_to(root)) for p in commands
            if "one_line_errors" not in p.read_text() and "accuracy.command(" not in p.read_text()]
    assert bare == []
