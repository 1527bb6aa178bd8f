"""Reading user files safely (nothing in them runs, every failure is one line naming the file)
and writing atomically."""
import os
from pathlib import Path

import pytest
import torch

from adjointdpm import files


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


def test_exclusive_refuses_a_second_process_and_takes_over_a_dead_one_s_lock(tmp_path):
    import subprocess
    import sys
    with files.exclusive(tmp_path):
        other = subprocess.run([sys.executable, "-c", f"from adjointdpm import files\n"
                                f"with files.exclusive({str(tmp_path)!r}): pass"], capture_output=True, text=True)
        assert other.returncode != 0 and f"another run (process {os.getpid()}) is writing to" in other.stderr
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(dead.stdout.strip())  # left by a process that is gone
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
    from adjointdpm import files
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    loaded = files.load_weights(torch.nn.Linear(3, 2), path, "test weights")
    assert torch.equal(loaded.weight, torch.load(path, weights_only=True)["weight"])
    with pytest.raises(ValueError, match=r"^test weights .* do not fit Linear: Error\(s\) in loading") as err:
        files.load_weights(torch.nn.Linear(4, 2), path, "test weights")
    assert "\n" not in str(err.value)
