"""The identity models of handwritten.identity: trained apart, thresholds on same-class impostors,
and the committed ones able to tell two digits of one class apart."""
import math

import pytest
import torch

from handwritten import data, identity


def test_the_two_models_share_no_training_image_and_no_held_out_one():
    (_, split_f, _), (_, split_f2, _) = identity.MODELS["F"], identity.MODELS["F'"]
    masks = {split: data._mask(split) for split in (split_f, split_f2, "heldout")}
    assert not (masks[split_f] & masks[split_f2]).any()
    assert not ((masks[split_f] | masks[split_f2]) & masks["heldout"]).any()
    assert type(identity.load("F")) is not type(identity.load("F'"))


def test_the_threshold_counts_only_same_class_impostor_pairs():
    # features by hand: within a class, pairs at cosine 0.6; across classes, at cosine 0.99 (which a threshold over
    # all impostor pairs would pick up)
    c = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0.99, 0, math.sqrt(1 - 0.99 ** 2)]])
    labels = torch.tensor([0, 0, 1])
    assert identity.same_class_threshold(torch.nn.Identity(), c, labels, fmr=0.5) == pytest.approx(0.6)


def test_nt_xent_has_its_closed_form():
    # orthonormal views, each equal to its partner: every row sees its partner at 1/T and 2n - 2 others at 0
    n, T = 4, 0.5
    z = torch.eye(n)
    expected = -math.log(math.exp(1 / T) / (math.exp(1 / T) + 2 * n - 2))
    assert float(identity.nt_xent(z, z, T)) == pytest.approx(expected, rel=1e-6)
    assert float(identity.nt_xent(z, z.roll(1, 0), T)) > expected + 1  # partners swapped: far worse


@pytest.mark.parametrize("name", list(identity.MODELS))
def test_the_committed_models_tell_two_digits_of_one_class_apart(name):
    """At 0.1 % false matches among same-class pairs of held-out digits, an augmented copy of a digit
    still matches it most of the time, and the pixel average of a digit and its look-alike (the nearest of
    its class) matches both less often than not. (The digit classifier's features, F before these, put
    this threshold at cosine 0.997: a model of the class, not of the digit.)"""
    v = identity.verify(identity.load(name))
    assert v["true_match_rate"] >= 0.8 and v["pixel_average_match_rate"] < 0.6 and v["threshold"] < 0.97


def test_lookalike_pairs_are_disjoint_same_class_nearest_neighbours():
    images, labels = data.load("heldout")
    a, b = identity.lookalike_pairs(images, labels, 20, classes=[2, 5])
    assert labels[a].tolist() == labels[b].tolist() == [2, 5] * 20
    assert len(set(a.tolist()) | set(b.tolist())) == 80  # each image in one pair at most
    gray = images.mean(1).flatten(1)
    for n, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
        # the nearest of its class among the images no earlier pair of the class took and no attacker is
        earlier = set(b[:n][labels[b[:n]] == labels[i]].tolist()) | set(a.tolist())
        free = torch.tensor([k for k in torch.nonzero(labels == labels[i]).flatten().tolist() if k not in earlier])
        assert j == int(free[torch.cdist(gray[i:i + 1], gray[free]).argmin()])


def test_training_is_seeded():
    first, second = (identity.train("F'", steps=20, progress=False) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
