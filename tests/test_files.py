"""Reading user files safely (nothing in them runs, every failure is one line naming the file)
and writing atomically."""
import json
import os
import time

import pytest
import torch

from adjointdpm.tools import files


class Payload:
    """Unpickling it would run os.system: weights_only must refuse it before it runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_file_is_refused_without_running_and_without_torch_s_advice(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"weights": torch.zeros(2), "payload": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as err:
        files.load(tmp_path / "evil.pt", "checkpoint")
    message = str(err.value)
    assert "checkpoint" in message and str(tmp_path / "evil.pt") in message and "refused" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file", "truncated"])
def test_unreadable_files_are_named(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        torch.save({"w": torch.randn(100)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"shard {path} cannot be read: truncated, corrupt or not a torch file"):
        files.load(path, "shard")


def test_state_dict_files(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert torch.equal(files.load_state_dict(tmp_path / "wrapped.pt", "weights")["w"], torch.ones(2))
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="is not a state_dict of tensors"):
        files.load_state_dict(tmp_path / "list.pt", "weights")
    with pytest.raises(ValueError, match="weights .*missing.pt is not a file"):
        files.load_state_dict(tmp_path / "missing.pt", "weights")


def test_save_atomic_leaves_only_the_target(tmp_path):
    files.save_atomic({"x": torch.arange(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(files.load(tmp_path / "a.pt", "file")["x"], torch.arange(3))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        files.save_atomic(Unpicklable(), tmp_path / "b.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary left behind


def test_claim_keys_a_folder_by_its_settings(tmp_path):
    folder = tmp_path / "run"
    files.claim(folder, {"seed": 3, "sampler": {"steps": 10}})
    files.claim(folder, {"seed": 3, "sampler": {"steps": 10}})  # the same settings resume
    with pytest.raises(ValueError, match=r"holds work made with other settings: lr='\(unset\)' \(now 0.1\), "
                                         r"seed=3 \(now 4\); give another output folder, or delete"):
        files.claim(folder, {"seed": 4, "sampler": {"steps": 10}, "lr": 0.1})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        files.claim(tmp_path / "file", {})


def test_exclusive_refuses_a_second_process_and_frees_with_its_holder(tmp_path):
    import subprocess
    import sys
    with files.exclusive(tmp_path):
        other = subprocess.run([sys.executable, "-c", f"from adjointdpm.tools import files\n"
                                f"with files.exclusive({str(tmp_path)!r}): pass"], capture_output=True, text=True)
        assert other.returncode != 0 and f"another run (process {os.getpid()}) is writing to" in other.stderr
    killed = subprocess.run([sys.executable, "-c", f"import os\nfrom adjointdpm.tools import files\n"
                             f"with files.exclusive({str(tmp_path)!r}): os.kill(os.getpid(), 9)"])
    assert killed.returncode == -9  # died holding it: the kernel released the lock with the process
    with files.exclusive(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_fingerprint_sees_every_value():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert files.fingerprint(a) == files.fingerprint(a) != files.fingerprint(b)
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
        assert files.fingerprint(a) == files.fingerprint(b)
        b.bias[0] += 1e-7
    assert files.fingerprint(a) != files.fingerprint(b)
    assert files.fingerprint(torch.zeros(2)) != files.fingerprint(torch.zeros(2, dtype=torch.float64))
    assert files.fingerprint(torch.tensor(0.5)) != files.fingerprint(torch.tensor(0.7))  # 0-d, as a scalar parameter
    assert files.fingerprint(torch.zeros(1)) != files.fingerprint(torch.tensor(0.0))


def test_load_weights_refuses_another_architecture_in_one_line(tmp_path):
    import torch
    from adjointdpm.tools import files
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    loaded = files.load_weights(torch.nn.Linear(3, 2), path, "test weights")
    assert torch.equal(loaded.weight, torch.load(path, weights_only=True)["weight"])
    with pytest.raises(ValueError, match=r"^test weights .* do not fit Linear: Error\(s\) in loading") as err:
        files.load_weights(torch.nn.Linear(4, 2), path, "test weights")
    assert "\n" not in str(err.value)


def _hold_and_report(folder, barrier, held, errors):
    """One contender: wait for the others, try the lock, record whether it held it while anyone else did."""
    barrier.wait()
    try:
        with files.exclusive(folder):
            held.value += 1
            overlap = held.value > 1
            time.sleep(0.01)
            held.value -= 1
            if overlap:
                errors.value += 1
    except ValueError:
        pass


def test_exclusive_never_lets_two_processes_hold_it_at_once(tmp_path):
    """Processes released together at the same instant: never two inside at once, over 100 trials."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    held, errors = ctx.Value("i", 0, lock=False), ctx.Value("i", 0)
    for trial in range(100):
        n = 2 + trial % 3
        barrier = ctx.Barrier(n)
        procs = [ctx.Process(target=_hold_and_report, args=(tmp_path / str(trial), barrier, held, errors))
                 for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    assert errors.value == 0


def test_results_are_written_whole_and_never_through_a_symlink(tmp_path):
    import multiprocessing as mp
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.json").symlink_to(outside)
    files.write_json(tmp_path / "out" / "result.json", {"a": 1})
    assert outside.read_text() == "keep me" and not (tmp_path / "out" / "result.json").is_symlink()
    ctx = mp.get_context("fork")
    target = tmp_path / "out" / "big.json"
    payloads = [{"writer": w, "values": list(range(20_000))} for w in range(2)]
    for _ in range(20):
        procs = [ctx.Process(target=files.write_json, args=(target, p)) for p in payloads]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        assert json.loads(target.read_text()) in payloads
    assert not list((tmp_path / "out").glob(".*.tmp*"))  # no temporary left behind


def test_a_write_that_hits_a_size_limit_is_one_line_and_keeps_the_old_file(tmp_path):
    import subprocess
    import sys
    files.save_atomic({"x": torch.zeros(10)}, tmp_path / "a.pt")
    files.write_text(tmp_path / "b.md", "old")
    script = (f"import resource, signal, torch\nfrom adjointdpm.tools import files\n"
              f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
              f"for write in (lambda: files.save_atomic({{'x': torch.zeros(100_000)}}, {str(tmp_path / 'a.pt')!r}),\n"
              f"              lambda: files.write_text({str(tmp_path / 'b.md')!r}, 'x' * 100_000)):\n"
              f"    try:\n        write()\n    except OSError as err:\n        print(err)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"[Errno 27] cannot write {tmp_path / name}: File too large" for name in ("a.pt", "b.md")]
    assert torch.equal(files.load(tmp_path / "a.pt", "file")["x"], torch.zeros(10))
    assert (tmp_path / "b.md").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.md"]
