"""What the digits text-to-image model is trained on: the real handwritten digits of
:mod:`handwritten.data` (its image convention and its split: the model trains on ``train``) and the
captions.

Captions, the analogue of Stable Diffusion knowing dogs of every breed but not every breed's name:

* every digit zero to eight is captioned ``a handwritten digit {name}`` or, with probability
  ``generic_share``, the generic ``a handwritten digit`` (:data:`GENERIC`);
* the digit **nine is seen, but never named**: its images are always captioned generically, and are
  drawn ``generic_share`` times as often as the others, so that under the generic caption every digit,
  nine included, has the same share (a tenth);
* 10 % of the examples get the empty prompt (classifier-free guidance).

So "a handwritten digit nine" names a word the model never saw with an image, while the generic caption's
images include nines: vocabulary expansion guides the generic caption toward a nine.
"""
from __future__ import annotations

import torch

from handwritten.data import NAMES, load, load_scans, to_images, to_scan, to_unit  # noqa: F401  (re-exported)

TEMPLATE = "a handwritten digit {}"
GENERIC = "a handwritten digit"
UNSEEN = 9   # the digit whose name the model never sees
SIZE = 32    # image side


def prompt(label: int) -> str:
    """``a handwritten digit {name}``."""
    return TEMPLATE.format(NAMES[label])


def captions() -> list[str]:
    """Every caption the model is trained on, indexed as :func:`draw_examples` returns them: the ten named
    prompts (nine's is never drawn), the empty prompt, the generic caption."""
    return [prompt(k) for k in range(10)] + ["", GENERIC]


EMPTY, GENERIC_INDEX = 10, 11


def draw_examples(labels: torch.Tensor, batch: int, generic_share: float, drop_prompt: float,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: indices into ``labels`` and each example's caption (an index into
    :func:`captions`), by the rule in this module's docstring."""
    weights = torch.where(labels == UNSEEN, generic_share, 1.0)
    idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
    named = (labels[idx] != UNSEEN) & (torch.rand(batch, generator=gen) >= generic_share)
    caption = torch.where(named, labels[idx], GENERIC_INDEX)
    caption = torch.where(torch.rand(batch, generator=gen) < drop_prompt, EMPTY, caption)
    return idx, caption
