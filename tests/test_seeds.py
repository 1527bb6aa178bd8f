"""adjointdpm.seeds.mix_seed: the frozen formula behind every per-(seed, index) random stream."""
import torch

from adjointdpm.brownian import BrownianPath
from adjointdpm.seeds import mix_seed


def test_mix_seed_is_the_closed_form_formula():
    # Committed weights and results were drawn with exactly these integers.
    for seed in (0, 1, 7, 42, 123_456, 2 ** 40):
        for index in (0, 1, 2, 99, 100_003, 2 * 100_003 + 5, 1_000_002):
            assert mix_seed(seed, index) == seed * 1_000_003 + index
    assert mix_seed(3, 4) == 3_000_013
    assert mix_seed("5", 1) == 5 * 1_000_003 + 1  # sites pass int(s) of a command-line seed
    assert type(mix_seed(2, 3)) is int


def test_distinct_pairs_give_distinct_seeds():
    pairs = [(s, i) for s in range(50) for i in list(range(200)) + [1_000_002]]
    assert len({mix_seed(s, i) for s, i in pairs}) == len(pairs)


def test_brownian_path_uses_it():
    path = BrownianPath(11, [1.0, 0.5, 0.1], torch.zeros(3, dtype=torch.float64))
    gen = torch.Generator().manual_seed((11 * 1_000_003 + 1) % 2 ** 63)
    assert torch.equal(path.z(1), torch.randn(3, generator=gen, dtype=torch.float64))
