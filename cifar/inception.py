"""The TensorFlow Inception-v3 ``pool_3`` features that standard FID numbers use, through
torch-fidelity's port (pool_3, 2048 features, as in Heusel et al. 2017 and the TTUR code).

torch-fidelity is chosen because its ``FeatureExtractorInceptionV3`` reproduces the
TensorFlow graph (including TF1's bilinear resize to 299) and takes a local weights file,
``weights-inception-2015-12-05-6726825d.pth``; pytorch-fid only fetches its weights from a
URL, and clean-fid's TF-compatible mode loads a TorchScript file, i.e. runs code from disk.
torch-fidelity itself reads the file with ``weights_only=False``, so we read it with
``weights_only=True`` first and hand it only the tensors we read.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from adjointdpm.tools import files

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


def load_inception(path, device="cpu"):
    """A callable ``uint8 images (n, 3, H, W) -> (n, 2048) float64 pool_3 features``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Inception weights {path} is not a file: download torch-fidelity's {WEIGHTS_NAME} "
                         "(github.com/toshas/torch-fidelity/releases) and pass its local path")
    state = files.load_state_dict(path, "Inception weights")
    with tempfile.TemporaryDirectory() as tmp:  # a file we wrote from tensors only
        torch.save(state, Path(tmp) / WEIGHTS_NAME)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(Path(tmp) / WEIGHTS_NAME))
        except RuntimeError as err:  # load_state_dict's missing/unexpected/shape report
            raise ValueError(f"Inception weights {path} do not fit torch-fidelity's Inception-v3: {err}") from None
    net = net.to(device)

    @torch.no_grad()
    def features(images_uint8: torch.Tensor) -> torch.Tensor:
        return net(images_uint8.to(device))[0].double().cpu()

    return features
