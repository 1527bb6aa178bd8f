"""Identity models for individual handwritten digits: what tells two different threes apart.

The AdjointDEIS poster morphs two *faces*, two identities of one kind, told apart by a face-recognition
network. The digit analogue of a person is one handwritten digit (one scan); two digits of the same class
are two people. A digit classifier cannot play the face network: it maps every three to nearly the same
features. So two identity models are trained here, each with no labels at all (an image is its own
identity, its augmented copies the same identity seen again):

* ``F`` (:class:`InstanceNet`, what a morph attacks): a small CNN on the 32x32 image, trained by instance
  discrimination with SimCLR's NT-Xent loss (two augmentations of each image are the positive pair, the
  batch's other images its negatives) on the ``guide`` split;
* ``F'`` (:class:`ExemplarNet`, what judges the morphs and is never a loss): an MLP on the image averaged
  to 16x16, trained as an exemplar classifier (Dosovitskiy et al. 2014: each image of the ``judge`` split
  its own class, its augmentations that class's examples) with a cosine softmax, as face models are, and
  read at the layer before it.

They share no weights, no training image, no architecture and no loss. Each is verified as a face system
is (:func:`verify`): its match threshold where it falsely matches 0.1 % of impostor pairs of **the same
class** (two different held-out digits of one class), and at that threshold the share of augmented copies
of held-out digits it matches to their originals (the true-match rate).

``python -m handwritten.identity`` trains both again and writes their weights and verification.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adjointdpm.tools import cli, files
from adjointdpm.seeds import mix_seed

from . import data

WEIGHTS = Path(__file__).resolve().parent / "weights"
FMR = 1e-3  # the false-match rate the thresholds are set at (the poster's 0.1 %)
# How far an image may move and still be the same digit (handwritten.data.augment's strength): a few degrees,
# under a pixel, a few percent of brightness. The classifiers' full strength (12 degrees, 2 pixels) moves a
# digit further than two writers' threes differ, so a model invariant to it cannot tell them apart.
SAME_DIGIT = 0.4
LOOKALIKES = 20  # attacker-accomplice pairs per class whose pixel averages verify() tries


class InstanceNet(nn.Module):
    """``F``: four 3x3 convolutions (three of stride 2) and two linear layers on the gray 32x32 image,
    ``(n, 3, 32, 32)`` in ``[0, 1]`` -> 64-d features, compared by cosine as they were trained (the output
    of SimCLR's projection head: the space its loss shapes, where a cosine means "same digit")."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.mean(1, keepdim=True))


class ExemplarNet(nn.Module):
    """``F'``: an MLP on the gray image averaged to 16x16, ``(n, 3, H, W)`` in ``[0, 1]`` -> 128-d
    features. Trained as face models are, by a cosine softmax over the exemplars (:meth:`scores`:
    the cosine to each exemplar's learned direction, times :attr:`SCALE`), so a cosine between two
    images' features is what the training compared."""
    SCALE = 16.0

    def __init__(self, exemplars: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                  nn.Linear(256, 128))
        self.directions = nn.Parameter(torch.randn(exemplars, 128))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(F.adaptive_avg_pool2d(images.mean(1, keepdim=True), 16))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.SCALE * F.normalize(features, dim=1) @ F.normalize(self.directions, dim=1).T


MODELS = {  # name -> (class, training split, file)
    "F": (InstanceNet, "guide", "identity_F.safetensors"),
    "F'": (ExemplarNet, "judge", "identity_F2.safetensors"),
}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: for each of the ``2n`` views, the cross-entropy of picking its partner among the
    other ``2n - 1`` by cosine similarity over ``temperature``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, partner)


def train(name: str, steps: int = 1500, batch: int = 128, lr: float = 2e-3, temperature: float = 0.2,
          seed: int = 0, progress: bool = True) -> nn.Module:
    """Train identity model ``name`` (``"F"`` or ``"F'"``) on its split with :func:`handwritten.data.augment`
    at strength :data:`SAME_DIGIT`,
    AdamW and a cosine decay; seeded, so a rerun gives the same weights on the same machine."""
    from tqdm import tqdm
    cls, split, _ = MODELS[name]
    images = data.to_unit(data.load(split)[0])
    torch.manual_seed(seed)
    net = InstanceNet() if cls is InstanceNet else ExemplarNet(len(images))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in tqdm(range(steps), desc=f"identity model {name}", disable=not progress):
        gen = torch.Generator().manual_seed(mix_seed(seed, step))
        idx = torch.randperm(len(images), generator=gen)[:batch]
        if cls is InstanceNet:
            loss = nt_xent(*(net(data.augment(images[idx], gen, SAME_DIGIT)) for _ in range(2)), temperature)
        else:
            loss = F.cross_entropy(net.scores(net(data.augment(images[idx], gen, SAME_DIGIT))), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()


def load(name: str, path: Path | None = None) -> nn.Module:
    """The committed identity model ``name`` (``"F"`` or ``"F'"``), frozen, in eval mode."""
    if name not in MODELS:
        raise ValueError(f"identity model must be one of {tuple(MODELS)}, got {name!r}")
    cls, split, file = MODELS[name]
    net = InstanceNet() if cls is InstanceNet else ExemplarNet(len(data.load_scans(split)[1]))
    return files.load_weights(net, path or WEIGHTS / file, f"identity model {name} weights").eval().requires_grad_(False)


def cosine(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each pair's cosine similarity in ``model``'s features (flattened), as an identity model compares
    two images."""
    return F.cosine_similarity(model(x).flatten(1), model(y).flatten(1), dim=1)


@torch.no_grad()
def same_class_threshold(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, fmr: float = FMR) -> float:
    """The cosine above which ``model`` falsely matches a share ``fmr`` of the impostor pairs of the same
    class: every pair of two different ``images`` with the same label."""
    feats = F.normalize(model(images), dim=1)
    same = (labels[:, None] == labels[None, :]) & torch.ones(len(labels), len(labels), dtype=torch.bool).triu(1)
    return float(torch.quantile((feats @ feats.T)[same], 1 - fmr))


@torch.no_grad()
def verify(model: nn.Module, seed: int = 0) -> dict:
    """How ``model`` does as an identity model on the held-out digits: its same-class threshold at
    :data:`FMR`, the share of augmented copies it matches to their originals there (true matches), and
    the share of pixel averages ``(a + b) / 2`` of attacker-accomplice pairs (:func:`lookalike_pairs`) it matches
    to both ``a`` and ``b`` (what a morph that knows nothing of the model achieves)."""
    images, labels = data.load("heldout")
    images = data.to_unit(images)
    threshold = same_class_threshold(model, images, labels)
    copies = data.augment(images, torch.Generator().manual_seed(seed), SAME_DIGIT)
    a, b = lookalike_pairs(images, labels, LOOKALIKES, seed=seed)
    average = (images[a] + images[b]) / 2
    both = torch.minimum(cosine(model, average, images[a]), cosine(model, average, images[b]))
    return {"threshold": threshold, "fmr": FMR, "true_match_rate": float((cosine(model, copies, images) >= threshold)
                                                                         .float().mean()),
            "pixel_average_match_rate": float((both >= threshold).float().mean()), "heldout": len(labels)}


def lookalike_pairs(images: torch.Tensor, labels: torch.Tensor, per_class: int, classes=None, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(a, b)`` of attacker-accomplice pairs, as a morphing attack picks them: in each of
    ``classes`` (default: every label present), ``per_class`` attackers drawn by ``seed``, each in turn
    with the image of its class nearest to it in pixels (Euclidean, gray) that is in no other pair as
    its accomplice; classes in turn. Chosen by no identity model, so neither ``F`` nor ``F'`` is favoured."""
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    gray = images.float().mean(1).flatten(1)
    gen = torch.Generator().manual_seed(seed)
    chosen = {}
    for k in classes:
        pool = torch.nonzero(labels == k).flatten()
        if len(pool) < 2 * per_class:
            raise ValueError(f"class {k} has {len(pool)} images, too few for {per_class} disjoint pairs")
        attackers = pool[torch.randperm(len(pool), generator=gen)[:per_class]]
        d = torch.cdist(gray[attackers], gray[pool])
        taken = torch.isin(pool, attackers)  # an attacker is nobody's accomplice
        chosen[k] = []
        for i, attacker in enumerate(attackers.tolist()):
            j = int(d[i].masked_fill(taken, float("inf")).argmin())
            taken[j] = True
            chosen[k].append((attacker, int(pool[j])))
    ordered = [chosen[k][r] for r in range(per_class) for k in classes]  # classes in turn
    return torch.tensor([p[0] for p in ordered]), torch.tensor([p[1] for p in ordered])


def main(argv=None):
    parser = cli.Parser(prog="python -m handwritten.identity", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=WEIGHTS,
                        help=f"where the weights and identity.json go (default {WEIGHTS})")
    parser.add_argument("--steps", type=cli.count("training steps"), default=1500,
                        help="training steps of each (default 1500; " + cli.bound_help("training steps") + ")")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verify", action="store_true", help="train nothing: verify the weights in --out again "
                        "and rewrite identity.json's measurements")
    args = parser.parse_args(argv)
    record = {"command": "python -m handwritten.identity", "steps": args.steps, "seed": args.seed}
    if args.verify:  # the training's record stands; only the measurements are taken again
        try:
            record = json.loads((args.out / "identity.json").read_text())
        except (OSError, ValueError) as err:
            parser.error(f"argument --verify: {args.out / 'identity.json'} cannot be read ({err})")
    with cli.one_line_errors(parser):
        for name, (cls, split, file) in MODELS.items():
            start = time.perf_counter()
            if args.verify:
                net = load(name, args.out / file)
            else:
                net = train(name, args.steps, seed=args.seed, progress=not args.no_progress)
                files.save_tensors(net.state_dict(), args.out / file)
            record[name] = {"model": cls.__name__, "split": split, **verify(net, record["seed"])}
            print(f"{name}: threshold {record[name]['threshold']:.3f} at 0.1 % same-class false matches; true matches "
                  f"{100 * record[name]['true_match_rate']:.1f} %; pixel averages matched to both "
                  f"{100 * record[name]['pixel_average_match_rate']:.1f} %; {time.perf_counter() - start:.0f} s")
        files.write_json(args.out / "identity.json", record, significant=4)

if __name__ == "__main__":
    main()
