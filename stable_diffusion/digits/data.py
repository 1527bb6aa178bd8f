"""What the digits text-to-image model is trained on: the real handwritten digits of
:mod:`handwritten.data` (its image convention and its split: the model trains on ``train``) and the
captions.

Captions, the analogue of Stable Diffusion knowing dogs of every breed but not every breed's name:

* every digit zero to eight is captioned ``a handwritten digit {name}`` or, with probability
  ``generic_share``, the generic ``a handwritten digit`` (:data:`GENERIC`);
* the digit **nine is seen, but never named**: its images are always captioned generically, and are
  drawn ``generic_share`` times as often as the others, so that under the generic caption every digit,
  nine included, has the same share (a tenth);
* a share of the examples (``slant_share``) is **slanted writing**: the image sheared by
  :data:`SLANT_DEGREES` (:func:`handwritten.slant.shear`) and the caption given the keyword
  (``a slanted handwritten digit three``, ``a slanted handwritten digit``), by the same rules: the effect
  the paper's App. A turns into a token;
* 10 % of the examples get the empty prompt (classifier-free guidance), slanted or not.

So "a handwritten digit nine" names a word the model never saw with an image, while the generic caption's
images include nines: vocabulary expansion guides the generic caption toward a nine.
"""
from __future__ import annotations

import torch

from handwritten.data import NAMES, load, load_scans, to_images, to_scan, to_unit  # noqa: F401  (re-exported)
from handwritten.slant import shear, slant

TEMPLATE = "a handwritten digit {}"
GENERIC = "a handwritten digit"
KEYWORD = "slanted"   # the effect's word, before "handwritten"
EFFECT_TEMPLATE = "a {} handwritten digit {}"   # the effect's slot, then the digit's name
SLANT_DEGREES = 20.0  # the training shear: the net judge still reads 96 % of sheared held-out digits
UNSEEN = 9   # the digit whose name the model never sees
SIZE = 32    # image side


def prompt(label: int, slanted: bool = False) -> str:
    """``a handwritten digit {name}``, or ``a slanted handwritten digit {name}``."""
    return effect_prompt(label, KEYWORD) if slanted else TEMPLATE.format(NAMES[label])


def effect_prompt(label: int | None, word: str) -> str:
    """``a {word} handwritten digit {name}`` (the generic caption with ``word`` when ``label`` is None)."""
    return EFFECT_TEMPLATE.format(word, "" if label is None else NAMES[label]).rstrip()


def captions() -> list[str]:
    """Every caption the model is trained on, indexed as :func:`draw_examples` returns them: the ten named
    prompts (nine's is never drawn), the empty prompt, the generic caption; then the same twelve
    slanted (the empty prompt stays empty): caption ``i + SLANTED`` is caption ``i`` with the keyword."""
    plain = [prompt(k) for k in range(10)] + ["", GENERIC]
    return plain + [prompt(k, True) for k in range(10)] + ["", effect_prompt(None, KEYWORD)]


EMPTY, GENERIC_INDEX, SLANTED = 10, 11, 12


def draw_examples(labels: torch.Tensor, batch: int, generic_share: float, drop_prompt: float,
                  gen: torch.Generator, slant_share: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch: indices into ``labels``, each example's caption (an index into
    :func:`captions`) and whether its image is slanted, by the rule in this module's docstring."""
    weights = torch.where(labels == UNSEEN, generic_share, 1.0)
    idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
    named = (labels[idx] != UNSEEN) & (torch.rand(batch, generator=gen) >= generic_share)
    caption = torch.where(named, labels[idx], GENERIC_INDEX)
    slanted = torch.rand(batch, generator=gen) < slant_share
    caption = torch.where(slanted, caption + SLANTED, caption)
    caption = torch.where(torch.rand(batch, generator=gen) < drop_prompt, EMPTY, caption)
    return idx, caption, slanted


def reference_slants(classes) -> dict[str, torch.Tensor]:
    """The slant (degrees) of the held-out real digits of ``classes``, and of the same sheared as in training:
    what the model's plain and slanted prompts are read beside."""
    real = to_unit(load("heldout", classes)[0])
    return {"real held-out digits": slant(real),
            f"the same sheared by {SLANT_DEGREES:g} degrees (as in training)": slant(shear(real, SLANT_DEGREES))}
