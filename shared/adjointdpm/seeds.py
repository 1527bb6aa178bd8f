"""One rule for deriving a random stream's seed from a run's seed and an index.

Many loops here need a fresh, reproducible draw per (run seed, index): the Brownian increment of
SDE step ``i``, a training step's batch, a shard of generated images, a guidance step's noise.
Seeding a fresh ``torch.Generator`` with ``mix_seed(seed, index)`` makes each draw a pure function
of the pair, so it is the same on every device, in every process and after a resume, and does not
depend on how many draws came before. The multiplier 1_000_003 (a prime above any index used
here) keeps the pairs apart: ``mix_seed(s, i) == mix_seed(s2, i2)`` with ``0 <= i, i2 < 1_000_003``
only when ``(s, i) == (s2, i2)``.

The formula is frozen: committed weights and results were produced with these exact integers.
"""
from __future__ import annotations

SEED_STRIDE = 1_000_003


def mix_seed(seed: int, index: int) -> int:
    """``seed * 1_000_003 + index``: the seed of stream ``index`` of the run seeded ``seed``.

    Distinct for distinct pairs while ``0 <= index < 1_000_003``. Callers that need a
    non-negative 64-bit value for ``torch.Generator.manual_seed`` on large seeds reduce it
    themselves (``% 2**63``).
    """
    return int(seed) * SEED_STRIDE + int(index)
