"""Seeds for everything that is drawn outside the training stream.

Training noise comes from the global generators that `seed_everything` seeds. Everything else
(evaluation noise, per-step gradient noise, evaluation-time corruptions) draws from a generator of
its own, seeded by `mix_seed(run seed, what, ...)`, so that nothing drawn before it (a cache miss,
an extra callback, a resumed run) changes it, and it never moves the training stream.
"""

from __future__ import annotations

import hashlib

import torch

from genlab.compat import lightning_run_seed


def mix_seed(seed: int, *parts: int | str) -> int:
    """One seed in [0, 2**32) from a run seed and the names and numbers of what is drawn, e.g.
    mix_seed(seed, "test", rank, batch_idx). A hash rather than arithmetic, so that distinct parts
    never collide by accident ((1, 10) and (11, 0) differ); 32 bits so numpy's RandomState and
    scikit-learn take it as well as torch."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def generator_for(seed: int, *parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with mix_seed(seed, *parts)."""
    return torch.Generator(device=device).manual_seed(mix_seed(seed, *parts))


def run_seed() -> int:
    """The run's seed, as Lightning's seed_everything records it for the processes it starts
    (DDP children included); 0 outside a seeded run."""
    return lightning_run_seed()
