"""genlab.seeding.forked_rng: the one helper that forks the global random state (and seeds it)."""

import torch

from genlab.seeding import forked_rng


def test_forked_rng_gives_the_state_back_and_seeds_inside():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with forked_rng():
        torch.rand(10)  # draws inside do not move the stream outside
    assert torch.equal(torch.rand(3), expected)

    with forked_rng("cpu", seed=7):
        inside = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(4))  # as if the block had seeded the generator itself
    with forked_rng(torch.device("cpu"), seed=7):
        assert torch.equal(torch.rand(4), inside)
