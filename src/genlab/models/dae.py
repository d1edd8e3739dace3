"""Denoising auto-encoder with the generative Markov chain of Bengio et al. 2013.

Composed of components (issue 22): `model.net` (genlab.nets.NETS: the encoder(image_shape,
code_dim) and decoder(code_dim, image_shape) pair), `model.likelihood` (LIKELIHOODS: bernoulli |
gaussian with std and learn_std) and `model.objective` (DAE_OBJECTIVES: denoise with walkback).

Training: corrupt a clean image x with the configured corruption C (genlab.corruption) and
maximise log P(x | x~), x~ ~ C(x~ | x), the log-likelihood of the *clean* image under the decoder
(the `model.likelihood` component). Units: train/recon, val/recon and test/recon are
that log-likelihood in nats per image (summed over pixels, averaged over images), higher is better;
train/corruption_level is the corruption's current level in its own units (see genlab.corruption).
Validation corrupts with a seeded generator, so val/recon moves only with the weights and with the
corruption's level (a schedule that lowers the level also makes validation easier).

Sampling ("generalised denoising auto-encoders", Bengio et al. 2013): the Markov chain
x_t -> x~_t ~ C(x~ | x_t) -> x_{t+1} ~ P(x | x~_t), started from uniform noise (`generate`) or from
data. `chain_draw` (CHAIN_DRAWS) decides what x_{t+1} is:
  - sample: a draw from P(x | x~), the likelihood's `sample` (Bernoulli: binary pixels; Gaussian:
    mean + std * noise, clamped to [0, 1]). This is the chain the paper's consistency result is about.
  - mean (default): the mean E[x | x~]. With the Bernoulli likelihood on grey-level images (Fashion-
    MNIST) a draw is a binary image, unlike anything the network was trained to denoise (it only
    saw corruptions of grey-level images), so the chain drifts off the data; feeding back the mean
    keeps the chain on grey-level images. The chain's randomness then comes from C alone, which
    under-disperses P(x | x~) (a point mass at its mean): samples should be less diverse than
    the model's distribution (expected, not measured). One epoch on Fashion-MNIST with
    salt_pepper 0.3: 30-step chains from noise reach garment shapes with mean (mean pixel 0.31,
    the data's 0.29) and collapse to near-black images with sample (mean pixel 0.01).
Grids always show the means E[x | x~_t] of each step, whatever chain_draw is.

Walkback (Bengio et al. 2013, section 3.4), `model.objective.walkback=k` (the `denoise` objective,
DAE_OBJECTIVES): after the usual step, run k more steps of
the chain from x~ (draw x* by chain_draw, corrupt it again) and train P(x | x~*) to return to the
original clean x as well, so the model also learns to undo the spurious modes its own chain visits.
The loss is the mean of the k+1 terms; train/recon is always the one-step term, so runs with
different k share one scale. (The paper draws the number of steps from a geometric distribution;
a fixed k is simpler and is the knob the ablation needs.)

Representation (genlab.capabilities): `codes(x)` is the encoder's bottleneck code of the clean
image, what the linear probe (metrics.linear_probe) scores.

Checkpoints: genlab loads them with weights_only=True, so the corruption is stored in the
hyper-parameters as its plain config (`Corruption.config`) and rebuilt from it (`as_corruption`);
its state (images seen, adaptive level) travels in the state_dict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from genlab.capabilities import Representation
from genlab.config import require
from genlab.corruption import AdaptiveSchedule, as_corruption
from genlab.models.common import (
    FAMILIES,
    GenerativeModule,
    eval_means,
    eval_noise,
    interleave,
    log_eval,
    triplets,
)
from genlab.models.likelihood import LIKELIHOODS, Likelihood
from genlab.nets import NETS
from genlab.registry import Component, Registry
from genlab.seeding import ExampleNoise
from genlab.settings import Settings, choice, positive, positive_int, setting

# chain_draw: what the chain's next state is, from the likelihood and a decoder output (module doc)
CHAIN_DRAWS: dict[str, Callable[[Likelihood, Tensor], Tensor]] = {
    "mean": lambda likelihood, out: likelihood.mean(out),
    "sample": lambda likelihood, out: likelihood.sample(out),
}

# the DAE's training objectives (`model.objective`)
DAE_OBJECTIVES: Registry[type[Component]] = Registry("DAE objective", "model.objective")


# --- the objective ---------------------------------------------------------------------------------


def _walkback_steps(value, key: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            key, "an integer >= 0 (0 = off)", value)


@dataclasses.dataclass
class DenoiseSettings(Settings):
    walkback: int = setting(0, _walkback_steps)  # extra chain steps trained back to the clean x


@DAE_OBJECTIVES.register("denoise")
class Denoise(Component):
    """-log P(x | x~) of the clean x, averaged with `walkback` more terms from the chain's own
    corrupted states (module doc). It receives the DAE's parts as call arguments: `denoise`
    (x~ -> decoder output), `corrupt(x, generator)`, `log_prob(x, out)` and `draw(out)`."""

    Settings = DenoiseSettings

    def terms(self, x: Tensor, denoise, corrupt, log_prob, draw,
              generator: torch.Generator | ExampleNoise | None = None,
              walkback: int | None = None) -> list[Tensor]:
        """log P(x | x~) per image [B] for the corrupted input (first) and each walkback step
        (`walkback`: the settings' unless given; evaluation asks for 0)."""
        walkback = self.settings.walkback if walkback is None else walkback
        x_tilde = corrupt(x, generator)
        terms = []
        for k in range(walkback + 1):
            out = denoise(x_tilde)
            terms.append(log_prob(x, out))
            if k < walkback:  # the chain's own next corrupted state, a training input (no gradient)
                with torch.no_grad():
                    x_tilde = corrupt(draw(out), None)
        return terms

    @staticmethod
    def loss(terms: list[Tensor]) -> Tensor:
        """The mean of the terms' negatives, averaged over images."""
        return -torch.stack(terms).mean()


# --- the model -------------------------------------------------------------------------------------


@dataclasses.dataclass
class DAESettings(Settings):
    corruption: object = None  # a Corruption, its plain config (model.corruption: ${corruption}) or None
    code_dim: int = positive_int(64)
    net: str | dict = "conv"  # genlab.nets.NETS: encoder(image_shape, code_dim), decoder(code_dim, image_shape)
    likelihood: str | dict = "bernoulli"  # genlab.models.likelihood.LIKELIHOODS: P(x | x~)
    objective: str | dict = "denoise"  # DAE_OBJECTIVES
    chain_steps: int = positive_int(30)
    chain_draw: str = choice("mean", list(CHAIN_DRAWS))
    lr: float = positive(1e-3)
    n_grid: int = positive_int(64)


@FAMILIES.register("dae")
class DAE(GenerativeModule, Representation):
    Settings = DAESettings

    @classmethod
    def reads_corruption_when(cls) -> dict[str, tuple[str, ...]] | None:
        return {}  # its inputs

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        self.corruption = as_corruption(s.corruption)
        require(not isinstance(self.corruption.schedule, AdaptiveSchedule), "corruption.schedule.kind",
                "constant | linear | cosine for model=dae (adaptive needs a discriminator's feedback)",
                "adaptive")
        net = NETS.build(s.net, "model.net")
        self.objective = DAE_OBJECTIVES.build(s.objective, "model.objective")
        self._draw = CHAIN_DRAWS[s.chain_draw]
        # the networks in this order (their initialisation draws from the global RNG), then the
        # likelihood, whose learned std (if any) comes last among the parameters
        self.encoder = net.encoder(self.image_shape, s.code_dim)
        self.decoder = net.decoder(s.code_dim, self.image_shape)
        self.likelihood = LIKELIHOODS.build(s.likelihood, "model.likelihood")
        self.means = eval_means(["recon"])
        # fixed chain starts, so grids of one run are comparable across epochs
        self.register_buffer("fixed_noise", torch.rand(s.n_grid, *self.image_shape,
                                                       generator=torch.Generator().manual_seed(0)),
                             persistent=False)
        self.save_settings(s, net=net, likelihood=self.likelihood, objective=self.objective,
                           corruption=self.corruption)

    # -- the model ----------------------------------------------------------------------------
    def denoise(self, x_tilde: Tensor) -> Tensor:
        """Decoder output (logits or Gaussian means) parameterising P(x | x~), [B, C, H, W]."""
        return self.decoder(self.encoder(x_tilde))

    def codes(self, x: Tensor) -> Tensor:
        """The bottleneck code of the clean image x (no corruption), [B, code_dim]: what the
        linear probe reads (Vincent et al. 2010 score the learnt features the same way)."""
        return self.encoder(x)

    def draw(self, out: Tensor) -> Tensor:
        """The chain's next state x ~ P(x | x~) from a decoder output, per chain_draw (module doc)."""
        return self._draw(self.likelihood, out)

    def corrupt(self, x: Tensor, generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        return self.corruption(x, generator=generator)

    def recon_terms(self, x: Tensor, generator: torch.Generator | ExampleNoise | None = None,
                    walkback: int | None = 0) -> list[Tensor]:
        """log P(x | x~) per image [B] for the corrupted input (first) and each walkback step
        (`walkback`: None for the objective's own setting), by the objective (Denoise.terms)."""
        return self.objective.terms(x, self.denoise, self.corrupt, self.likelihood.log_prob, self.draw,
                                    generator=generator, walkback=walkback)

    @torch.no_grad()
    def chain(self, x0: Tensor, steps: int) -> Tensor:
        """Run the chain for `steps` steps from x0 [n, C, H, W] in [0, 1]: the means E[x | x~_t]
        of every step, [n, steps, C, H, W] in [0, 1]."""
        x, means = x0, []
        for _ in range(steps):
            out = self.denoise(self.corruption(x))
            means.append(self.likelihood.mean(out))
            x = self.draw(out)
        return torch.stack(means, dim=1)

    def noise(self, n: int) -> Tensor:
        return torch.rand(n, *self.image_shape, device=self.device)

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """n chain samples in [0, 1]: the mean after `chain_steps` steps from uniform noise."""
        return self.chain(self.noise(n), self.hparams.chain_steps)[:, -1]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | x~] for x~ a corruption of x: the denoised image (genlab-sample mode=reconstruct)."""
        return self.likelihood.mean(self.denoise(self.corruption(x)))

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample modes: `chain` (n chains from noise, one column per step), `chain_data`
        (n chains from test images; the first column is the image, then steps - 1 steps) and
        `reconstruct` (test images next to their denoised corruptions)."""
        def from_data():
            x = real_fn(n)
            return torch.cat([x.unsqueeze(1), self.chain(x, steps - 1)], dim=1).flatten(0, 1)

        def reconstruct():
            x = real_fn(n)
            return interleave(x, self.reconstruct(x))

        return {"chain": lambda: self.chain(self.noise(n), steps).flatten(0, 1),
                "chain_data": from_data, "reconstruct": reconstruct}

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """Square grids (rows = chains, columns = time, k = sqrt(len(real)) of each): the chain from
        noise at k evenly spaced steps up to chain_steps; the chain from data (first column the
        image); and clean | corrupted | denoised triples."""
        k = max(1, math.isqrt(len(real)))
        steps = self.hparams.chain_steps

        def columns(m):  # m evenly spaced steps, the last one included
            return torch.linspace(0, steps - 1, m).round().long()

        from_noise = self.chain(self.fixed_noise[:k], steps)[:, columns(k)]
        x = real[:k]
        from_data = torch.cat([x.unsqueeze(1), self.chain(x, steps)[:, columns(k - 1)]], dim=1)
        corrupted = self.corruption(real, generator=torch.Generator().manual_seed(0))
        denoised = self.likelihood.mean(self.denoise(corrupted))
        return {"chain": from_noise.flatten(0, 1), "chain_data": from_data.flatten(0, 1),
                "denoising": triplets(real, corrupted.clamp(0, 1), denoised)}

    # -- Lightning ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x = batch[0]
        terms = self.recon_terms(x, walkback=None)
        loss = self.objective.loss(terms)
        self.corruption.step(x.shape[0] * self.trainer.world_size)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/recon", terms[0].mean().detach())
        self.log("train/corruption_level", self.corruption.current_level)
        return loss

    def _eval_step(self, stage: str, batch) -> None:
        # each image's own seeded corruption (eval_noise): the same every epoch, after a resume
        # and in any DDP process, and the training stream never moves
        x, _, index = batch
        log_eval(self, stage, {"recon": self.recon_terms(x, generator=eval_noise(stage, index))[0]})

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def configure_optimizers(self):
        return self.adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)
