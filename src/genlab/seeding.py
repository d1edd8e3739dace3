"""Seeds for everything that is drawn outside the training stream.

Training noise comes from the global generators that `seed_everything` seeds. Everything else
(evaluation noise, per-step gradient noise, evaluation-time corruptions) draws from a generator of
its own, seeded by `mix_seed(run seed, what, ...)`, so that nothing drawn before it (a cache miss,
an extra callback, a resumed run) changes it, and it never moves the training stream.

The noise of a validation or test estimate (the VAE's ELBO and importance samples, the DAE's and
the GANs' evaluation corruptions, the RBM's pseudo-likelihood pixels) is `ExampleNoise`: one
generator per example, keyed by the example's index in its split. An image then gets the same
noise whichever process and batch it lands in, so a DDP evaluation sees exactly the draws of a
single-process one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

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


class ExampleNoise:
    """Noise for a batch of evaluation examples, each drawn from its own generator seeded with
    mix_seed(seed, phase, index), where `index` is the example's position in its split (the third
    element of a genlab validation or test batch). Successive draws continue each example's own
    stream, so they too are the same whatever the batch around the example."""

    def __init__(self, seed: int, phase: str, index: Tensor):
        self.generators = [generator_for(seed, phase, i) for i in index.tolist()]

    def __len__(self) -> int:
        return len(self.generators)


def draw(shape, generator: torch.Generator | ExampleNoise | None = None, *, normal: bool = False,
         batch_dim: int = 0, dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None) -> Tensor:
    """Uniform [0, 1) draws (standard normal with `normal`) of `shape` on `device`, from
      - None: the device's global generator (training noise);
      - a torch.Generator: drawn on its own device, then moved, so a seeded CPU generator gives
        the same draws whatever device the tensors are on;
      - ExampleNoise: each example's slice along `batch_dim` drawn in one call from its own
        generator (on the CPU, in float32), so it does not depend on the batch it is in."""
    fn = torch.randn if normal else torch.rand
    if not isinstance(generator, ExampleNoise):
        where = device if generator is None else generator.device
        out = fn(tuple(shape), generator=generator, device=where, dtype=dtype)
        return out if device is None else out.to(device)
    shape = list(shape)
    if shape[batch_dim] != len(generator):
        raise ValueError(f"{len(generator)} examples' noise for a batch dimension of {shape[batch_dim]}")
    one = shape[:batch_dim] + shape[batch_dim + 1:]
    parts = [fn(one, generator=g) for g in generator.generators]
    out = torch.stack(parts, batch_dim) if parts else torch.empty(shape)
    return out.to(dtype=dtype) if device is None else out.to(device=device, dtype=dtype)


@contextmanager
def forked_rng(device: torch.device | str = "cpu", seed: int | None = None) -> Iterator[None]:
    """Run a block on a fork of the global random state: the CPU generator's, and `device`'s
    when it is a CUDA device; after the block, the state is what it was before, whatever the
    block drew. With `seed`, the global generators are seeded with it inside the block (for code
    that draws from them and takes no generator of its own, such as a family's generate(n))."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def run_seed() -> int:
    """The run's seed, as Lightning's seed_everything records it for the processes it starts
    (DDP children included); 0 outside a seeded run."""
    return lightning_run_seed()
