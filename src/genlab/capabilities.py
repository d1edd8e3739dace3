"""Capabilities a model or a data module declares, so that evaluations ask for a capability by
name instead of probing for attributes.

A class declares one by listing it among its bases (`class VAE(GenerativeModule, Encoder)`);
`isinstance(obj, Encoder)` then holds, and a type checker verifies the methods. Checks use
isinstance with these protocols only, never hasattr or a name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Representation(Protocol):
    """A model that maps an image to a code vector, with or without a posterior (the VAE's
    posterior mean, the DAE's bottleneck): the linear probe needs it."""

    def codes(self, x: Tensor) -> Tensor:
        """The image's representation, [B, D], deterministic (no noise is drawn). x: float images
        [B, C, H, W] in [0, 1]."""
        ...


@runtime_checkable
class Encoder(Representation, Protocol):
    """A model with an amortised posterior q(z | x) over a latent space with a prior p(z):
    latent diagnostics (active units, MMD to the prior, aggregate KL, the ex-post mixture, the
    reconstruction FID) and
    disentanglement scores need it. x: float images [B, C, H, W] in [0, 1]. Its `codes` (a
    Representation) are the ones scored for disentanglement (e.g. the posterior mean)."""

    posterior_family: str  # q(z | x)'s family by name (gaussian | uniform), for figures and messages

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of q(z | x), each [B, D]."""
        ...

    def sample_z(self, mu: Tensor, std: Tensor, k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draws from q(z | x) given its parameters, [B, D] (or [k, B, D]), in the model's own
        posterior family, from `generator` when given."""
        ...

    def prior_sample(self, n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws [n, D] from the model's prior p(z) (on its device, made in `dtype`), from
        `generator` when given."""
        ...

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) under the model's prior, summed over latent units: [...] for z [..., D]."""
        ...

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at the posterior mean of each image: float images [B, C, H, W] in
        [0, 1], deterministic (no noise is drawn); val/fid_recon scores them."""
        ...


@runtime_checkable
class KnownFactors(Protocol):
    """Data generated from known, independent factors, each with a finite number of levels
    drawn uniformly: disentanglement scores need it."""

    factor_sizes: tuple[int, ...]  # levels per factor

    def render(self, factors: Tensor) -> Tensor:
        """Factor level indices LongTensor [B, K] -> uint8 images [B, C, H, W] on their device."""
        ...


@runtime_checkable
class RealImages(Protocol):
    """A data module that hands out its real images in a fixed order (every genlab data module,
    through genlab.data.base.InMemoryDataModule): the FID reference and the restoration GAN's
    fixed real batch need it."""

    def images(self, split: str, n: int | None = None) -> Tensor:
        """The first n (default all) images of split, float [n, C, H, W] in [0, 1]."""
        ...

    def fingerprint(self, split: str, n: int) -> str:
        """A hash identifying exactly those images (keys the FID feature cache)."""
        ...


@runtime_checkable
class NamedFactors(KnownFactors, Protocol):
    """Known factors with names, some of them rotations: a model that ties latent units to
    named factors (model=named_vae) needs it. Labels of such data are factor level indices
    [B, K] in the order of `factor_names`."""

    factor_names: tuple[str, ...]  # one per entry of factor_sizes
    periodic_factors: tuple[str, ...]  # the factors that are rotations: `rotation` gives them

    def rotation(self, factors: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """For a periodic factor: each image's rotation in radians and the period in radians
        after which the image repeats (2 pi for a shape without rotational symmetry), each [B]."""
        ...


@runtime_checkable
class BinaryImages(Protocol):
    """A data module that can hand out binary images (every pixel 0 or 255): a model whose
    likelihood is over binary pixels (model=rbm) needs it, with `binary_images` true. Every genlab
    data module declares it (through genlab.data.base.InMemoryDataModule): its images are binary
    where the source is (dSprites) or where data.binarize is static or dynamic."""

    binary_images: bool  # whether the loaders hand out binary images, as configured


@runtime_checkable
class ClassLabels(Protocol):
    """A data module whose images each carry one class label in 0 .. num_classes - 1 (digits,
    Fashion-MNIST; through genlab.data.base.ClassLabelled): the linear probe needs it."""

    num_classes: int
    class_names: tuple[str, ...]  # one per class, in label order (for legends)

    def labels(self, split: str, n: int | None = None) -> Tensor:
        """The class labels of the first n (default all) images of split, LongTensor [n] on the
        CPU, in the order of `images(split, n)`."""
        ...


@runtime_checkable
class ClassConditional(Protocol):
    """A model that generates images of requested classes (model=cvae, model=cdcgan; the
    class-conditional metrics and `genlab-sample class=C` need it). Where conditioning is an option
    of a family (the VAE's `conditional`, the DCGAN's conditional generator), a model declares the
    capability itself: it holds `num_classes` only when it is conditional, so isinstance answers for
    the model, not for its family. Its `generate(n)` draws classes 0..num_classes-1 in turn."""

    num_classes: int  # labels are 0 .. num_classes - 1, those of the data it was trained on

    def generate_class(self, labels: Tensor) -> Tensor:
        """One image of each requested class: labels LongTensor [n] -> float images [n, C, H, W]
        in [0, 1], drawn from the training stream."""
        ...


@runtime_checkable
class NamedGeneration(Protocol):
    """A model whose first latent units carry named factors of the data and that generates with
    their values commanded (model=named_vae, model=named_gan; genlab.models.named): the commanded-
    factor evaluator (genlab.callbacks.commanded) needs it. As with ClassConditional, a model
    declares it itself: it holds `named_factor_kinds` only when it has named units."""

    named_factor_kinds: dict[str, str]  # factor name -> its coding (circle | line), in unit order

    def generate_named(self, values: Mapping[str, Tensor]) -> Tensor:
        """Images with the named units set: values maps factor names to codes [n, units] of their
        coding (circle: (cos phi, sin phi)); the other units are drawn as for generate(n), from the
        training stream. Float images [n, C, H, W] in [0, 1]."""
        ...
