"""The full Table 1 path (score_sde checkpoint + TF Inception + statistics file) on files
the test writes in the real formats: a tiny DDPM++ checkpoint and randomly initialised
Inception-v3 weights of torch-fidelity's exact layout."""
from unittest import mock

import numpy as np
import pytest
import torch

from cifar import DDPMpp, table1
from cifar.inception import load_inception
from helpers import one_line_error

TINY32 = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    root = tmp_path_factory.mktemp("real")
    # torch-fidelity's Inception with its own random init (the constructor would download: skip that)
    with mock.patch.object(tfi, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        inception = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(inception.state_dict(), root / "inception.pth")
    torch.manual_seed(0)
    net = DDPMpp("cifar10_ddpmpp_continuous", **TINY32)
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()},
                "ema": {"shadow_params": [p.detach() for p in net.parameters()]}, "optimizer": {}, "step": 1},
               root / "checkpoint.pth")
    pool_3 = np.random.default_rng(0).normal(size=(64, 2048)).astype(np.float32)
    np.savez(root / "cifar10_stats.npz", pool_3=pool_3)
    return root


def test_inception_features_match_torch_fidelity(files):
    features = load_inception(files / "inception.pth")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    direct = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                         feature_extractor_weights_path=str(files / "inception.pth"))
    out = features(images)
    assert out.shape == (3, 2048) and out.dtype == torch.float64
    assert torch.equal(out.float(), direct(images)[0])


def test_full_path_on_tiny_checkpoint(files, tmp_path):
    setup = table1.checkpoint_setup(files / "checkpoint.pth", files / "inception.pth", files / "cifar10_stats.npz",
                                    "cifar10_ddpmpp_continuous", "cpu", **TINY32)
    result = table1.run(setup, [8], samples=6, batch=3, out=tmp_path, progress=False, grids=["logSNR"])
    text = table1.write(result, tmp_path)
    assert "FID on score_sde" in text and "STAND-IN" not in text
    assert [r["sampler"] for r in result["rows"]] == list(table1.SAMPLERS)
    for row in result["rows"]:
        assert np.isfinite(row["distance"]) and row["distance"] > 0 and "seconds" not in row
    assert len(list((tmp_path / "samples" / "checkpoint").glob("logSNR/*/shard_*.pt"))) == 3 * 2


def test_cli_errors(files, tmp_path, capsys):
    one_line_error(table1.main, ["--checkpoint", str(files / "checkpoint.pth")], capsys,
                   "missing: --inception, --fid-stats")
    full = ["--checkpoint", str(files / "checkpoint.pth"), "--inception", str(files / "inception.pth"),
            "--samples", "4", "--batch", "2", "--nfe", "8", "--out", str(tmp_path / "out")]
    one_line_error(table1.main, full + ["--fid-stats", str(tmp_path / "none.npz")], capsys,
                   "argument --fid-stats: " + str(tmp_path / "none.npz") + " does not exist")
    # statistics of the wrong dimension, or NaN, are refused before any sampling
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    one_line_error(table1.main, full + ["--fid-stats", str(tmp_path / "small.npz")], capsys,
                   "reference statistics have mu (64,) and sigma (64, 64), but the features have 2048 dimensions")
    np.savez(tmp_path / "nan.npz", mu=np.full(2048, np.nan), sigma=np.eye(2048))
    one_line_error(table1.main, full + ["--fid-stats", str(tmp_path / "nan.npz")], capsys, "non-finite values")
    assert not (tmp_path / "out").exists()  # nothing was sampled
    (tmp_path / "empty.npz").write_bytes(b"")
    one_line_error(table1.main, full + ["--fid-stats", str(tmp_path / "empty.npz")], capsys,
                   f"statistics file {tmp_path / 'empty.npz'} is not a readable .npz")
    torch.save({"layer": torch.zeros(2), "code": mock.sentinel}, tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match="holds Python objects, not only tensors .*refused, nothing in it ran"):
        load_inception(tmp_path / "unsafe.pth")
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="do not fit torch-fidelity's Inception-v3"):
        load_inception(tmp_path / "wrong.pth")
