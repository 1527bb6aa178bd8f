"""Resumable work is keyed by every setting that changes it: a rerun with another setting never
returns the old work as if it were the new one (issue 40's three cases, and every command's arguments)."""
import argparse
import importlib
import json
from unittest import mock

import pytest
import torch

from adjointdpm.tools import files
from adjointdpm.tools.training import Training


class _Parsed(Exception):
    pass


def _parser_of(main, argv=()):
    """The parser ``main`` builds, caught as it parses (no work runs)."""
    def grab(self, args=None, namespace=None):
        raise _Parsed(self)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab):
        try:
            main(list(argv))
        except _Parsed as caught:
            return caught.args[0]
    raise AssertionError(f"{main} parsed nothing")


def _subparser(parser, name):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _dests(parser):
    return {a.dest for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}


def _command(name):
    """(the arguments' parser, the module's KEYED and UNKEYED tables) of each resumable command."""
    if name == "stylize":
        from stable_diffusion.__main__ import parser
        from stable_diffusion.apps.stylize import KEYED, UNKEYED
        return _subparser(parser(), "stylize"), KEYED, UNKEYED
    if name == "digits train":
        module = importlib.import_module("stable_diffusion.digits.__main__")
        return _subparser(module.parser(), "train"), module.TRAIN_KEYED, module.TRAIN_UNKEYED
    module = importlib.import_module(name)
    tables = importlib.import_module("adjointdpm.tools.accuracy") if name.endswith("accuracy") else module
    return _parser_of(module.main), tables.KEYED, tables.UNKEYED


@pytest.mark.parametrize("name", ["cifar.table1", "cifar.train_digits", "cifar.reversible", "cifar.adjoint_accuracy",
                                  "stable_diffusion.digits.accuracy", "stable_diffusion.bench", "toy.bench", "stylize",
                                  "digits train"])
def test_every_argument_is_keyed_or_declared_not_to_change_results(name):
    parser, keyed, unkeyed = _command(name)
    dests = _dests(parser)
    assert not set(keyed) & set(unkeyed), f"{name}: declared both keyed and not: {set(keyed) & set(unkeyed)}"
    assert dests - set(keyed) - set(unkeyed) == set(), f"{name}: arguments neither keyed nor declared"
    assert set(keyed) | set(unkeyed) <= dests, f"{name}: declarations for arguments that do not exist"


def test_a_training_asked_for_fewer_steps_than_its_checkpoint_holds_is_refused(tmp_path):
    """stylize --epochs 1 into a 4-epoch folder: refused, never reported as one epoch beside four's losses."""
    w = torch.zeros(3)

    def run(total):
        params = {"w": w}
        return Training(params, torch.optim.SGD(params.values(), lr=0.1), tmp_path / "checkpoint.pt",
                        save_every=1).run(total, lambda step: ((params["w"] - step) ** 2).sum(), progress=False)
    assert len(run(4)) == 4
    with pytest.raises(ValueError, match=r"holds 4 steps, more than the 2 asked for"):
        run(2)
    assert len(run(6)) == 6  # more continue it


def test_bench_records_are_keyed_by_the_model_s_content_not_its_name(tmp_path, monkeypatch):
    """A folder whose UNet was replaced by a wider one is measured again, not answered from old records."""
    from stable_diffusion import bench
    from stable_diffusion.components import tiny_components
    model = tmp_path / "model"
    tiny_components().save_pretrained(model)
    measured = []

    def fake_case(module, *args, **where):  # the measurement itself is the bench's own test's; here: which cases run
        measured.append(args)
        return {"case": json.loads(args[3]), "model": str(model), "device": "cpu", "dtype": "float32", "repeats": 0,
                "strategy": "adjoint", "steps": 2, "resolution": 32, "attention": "sdpa", "checkpointing": [],
                "threads": 1, "setup_gib": 0.1, "peak_gib": 0.1, "seconds": 1.0, "machine_gib": 24.0,
                "weights_held_gib": 0.0, "live_setup_gib": 0.1}
    monkeypatch.setattr(bench, "run_in_fresh_process", fake_case)
    argv = ["--model", str(model), "--steps", "2", "--gradients", "adjoint", "--repeats", "0", "--out", str(tmp_path)]
    bench.main(argv)
    bench.main(argv)
    assert len(measured) == 1  # the same content: kept
    wide = tiny_components()
    wide.unet = type(wide.unet)(**{**wide.unet.config, "block_out_channels": (16, 32), "cross_attention_dim": 16})
    wide.unet.save_pretrained(model / "unet")
    bench.main(argv)
    assert len(measured) == 2  # another UNet under the same path: measured again
    records = json.loads((tmp_path / "bench.json").read_text())
    assert len(records) == 1 and records[0]["model_content"] == files.fingerprint_files(model)
