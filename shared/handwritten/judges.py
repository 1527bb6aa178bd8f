"""Judges of digit identity that never guide: what reads the generated digits in every table.

A guide (the classifier that guided sampling and the audit climb) is a poor judge of its own success:
the optimisation can satisfy it without drawing the digit (an adversarial image). So every result is
read by judges that took no part in producing it, none of them ever used as a loss:

* ``svc``: a support-vector machine (RBF kernel) on the 8x8 pixels of the scans, the images averaged
  back down to 8x8 (:func:`handwritten.data.to_scan`). It has no gradient to attack, and it is fitted
  on the spot, deterministically, from the ``judge`` split (no file to load).
* ``net``: a LeNet-5-style network (5x5 convolutions, average pooling, three dense layers), an
  architecture unlike the guide's, trained on the ``judge`` split only, which shares no image with
  the guide's ``guide`` split. Its 84-d penultimate features are the space of the judge-FID and KID.

``python -m handwritten.judges`` trains the network again and reports both judges' accuracy on the
``heldout`` split and on held-out scans put through the 8 -> 32 -> 8 round trip.
"""
from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adjointdpm.tools import cli, files
from adjointdpm.tools.frechet import distance_between, kernel_distance
from adjointdpm.seeds import mix_seed

from . import data

WEIGHTS = Path(__file__).resolve().parent / "weights" / "judge_net.safetensors"
NAMES = ("svc", "net")
CONFIDENT = 0.9  # the network's probability above which a reading counts as confident
SVC_SETTINGS = dict(C=10.0, gamma=0.001)  # scikit-learn's digits example's gamma, on intensities 0..16


class JudgeNet(nn.Module):
    """LeNet-5 on the gray 32x32 image: ``(n, 3, H, W)`` in ``[0, 1]`` -> logits over the ten digits."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.out = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The 84-d penultimate features: the space of judge-FID and KID."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W), got {tuple(images.shape)}")
        x = images.float().mean(1, keepdim=True)
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        x = F.avg_pool2d(torch.tanh(self.conv1(x * 2 - 1)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        return torch.tanh(self.fc2(torch.tanh(self.fc1(x.flatten(1)))))

    def forward(self, images):
        return self.out(self.embed(images))


class Judges:
    """Both judges. :meth:`read` gives each one's digit for a batch of images in ``[0, 1]``;
    :meth:`distances` the judge-FID and KID of images against a reference set."""

    def __init__(self, net: JudgeNet | None = None):
        from sklearn.svm import SVC
        self.net = (net or load_net()).eval().requires_grad_(False)
        scans, labels = data.load_scans("judge")
        self.svc = SVC(**SVC_SETTINGS).fit(scans.flatten(1).numpy(), labels.numpy())

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"svc": labels, "net": labels}`` for images ``(n, 3, H, W)`` in ``[0, 1]``."""
        return {"svc": self._svc_labels(images), "net": self._net_probabilities(images).argmax(1)}

    def _svc_labels(self, images: torch.Tensor) -> torch.Tensor:
        scans = data.to_scan(images.detach().float().cpu()).flatten(1).numpy()
        return torch.as_tensor(self.svc.predict(scans), dtype=torch.long)

    @torch.no_grad()
    def _net_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu()
        return torch.cat([self.net(b).softmax(1) for b in images.split(512)] or [torch.empty(0, 10)])

    def recognised(self, images: torch.Tensor) -> torch.Tensor:
        """Which of ``images`` ``(n, 3, H, W)`` in ``[0, 1]`` are digits an independent reader
        recognises: the network reads them with probability above :data:`CONFIDENT`, the SVC reads the
        same digit, and their 8x8 scan lies as near a real training digit as 95 % of the held-out real
        digits do (so a blot both judges happen to call a "one" does not count)."""
        p = self._net_probabilities(images)
        near = nearest_real(data.to_scan(images.detach().float().cpu())) <= _near_enough()
        return (p.amax(1) > CONFIDENT) & (self._svc_labels(images) == p.argmax(1)) & near

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        images = images.detach().float().cpu()
        return torch.cat([self.net.embed(b) for b in images.split(512)]).double().numpy()

    def distances(self, images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Frechet distance and KID between ``images`` and ``reference`` (both in ``[0, 1]``) in the
        judge network's features."""
        a, b = self.features(images), self.features(reference)
        return {"fid": distance_between(a, b), "kid": kernel_distance(a, b)}


def nearest_real(scans: torch.Tensor) -> torch.Tensor:
    """Each scan's Euclidean distance (intensities 0..16) to the nearest scan of the ``train`` split."""
    train, _ = data.load_scans("train")
    return torch.cdist(scans.flatten(1).double(), train.flatten(1).double()).amin(1)


@lru_cache(maxsize=1)
def _near_enough() -> float:
    """The 95th percentile of the held-out real scans' distance to their nearest training scan."""
    heldout, _ = data.load_scans("heldout")
    return float(nearest_real(heldout).quantile(0.95))


@lru_cache(maxsize=1)
def judges() -> Judges:
    """The committed judges (the SVC fitted once per process)."""
    return Judges()


def load_net(path=WEIGHTS) -> JudgeNet:
    return files.load_weights(JudgeNet(), path, "judge network weights").eval()


def train_net(steps: int = 1500, batch: int = 64, lr: float = 3e-3, seed: int = 0, progress: bool = True
              ) -> JudgeNet:
    """LeNet-5 on the ``judge`` split with :func:`handwritten.data.augment`, AdamW, cosine decay; seeded."""
    from tqdm import tqdm
    torch.manual_seed(seed)
    net = JudgeNet()
    images, labels = data.load("judge")
    images = data.to_unit(images)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in tqdm(range(steps), desc="judge network", disable=not progress):
        gen = torch.Generator().manual_seed(mix_seed(seed, step))
        idx = torch.randint(len(images), (batch,), generator=gen)
        loss = F.cross_entropy(net(data.augment(images[idx], gen)), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()


def accuracy(judges_: Judges) -> dict:
    """Each judge's accuracy on the held-out images (as the models see them, 32x32) and on the
    held-out scans' round trip 8 -> 32 -> 8 (what the SVC reads of a perfectly drawn digit)."""
    images, labels = data.load("heldout")
    images = data.to_unit(images)
    scans, _ = data.load_scans("heldout")
    result = {name: float((read == labels).float().mean()) for name, read in judges_.read(images).items()}
    direct_svc = judges_.svc.predict(scans.flatten(1).numpy())
    return {"heldout_images": len(labels), "accuracy": result,
            "svc_accuracy_on_the_raw_8x8_scans": float((torch.as_tensor(direct_svc) == labels).float().mean()),
            "round_trip_mean_abs_error": float((data.to_scan(images) - scans).abs().mean())}


def main(argv=None):
    parser = cli.Parser(prog="python -m handwritten.judges", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=WEIGHTS.parent,
                        help=f"where judge_net.safetensors and judge_net.json go (default {WEIGHTS.parent})")
    parser.add_argument("--steps", type=cli.count("training steps"), default=1500,
                        help="training steps (default 1500; " + cli.bound_help("training steps") + ")")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser):
        start = time.perf_counter()
        net = train_net(args.steps, seed=args.seed, progress=not args.no_progress)
        files.save_tensors(net.state_dict(), args.out / WEIGHTS.name)
        record = {"command": "python -m handwritten.judges", "steps": args.steps, "seed": args.seed,
                  "svc": SVC_SETTINGS, **accuracy(Judges(net))}
        files.write_json(args.out / "judge_net.json", record, significant=4)  # no time: a rerun rewrites the same
        print(", ".join(f"{k} {100 * v:.1f}%" for k, v in record["accuracy"].items()), "on", record["heldout_images"],
              f"held-out digits; {time.perf_counter() - start:.0f} s")

if __name__ == "__main__":
    main()
