"""Variational auto-encoder, composed of components (`model=vae`).

Units: every ELBO, reconstruction term, KL and log-likelihood is in nats per image, summed over
pixels and latent dimensions and averaged over images. Higher ELBO and log-likelihood are better;
KL is >= 0.

Components, each a config node (a registry name, or {name: ..., setting: value}):
    net         the encoder/decoder pair (genlab.nets.NETS): conv (base_channels) | mlp (hidden,
                activation, the papers' MNIST networks)
    likelihood  p(x | z) (genlab.models.likelihood): bernoulli | gaussian (std, learn_std)
    posterior   q(z | x)'s family by its reparameterisation noise (genlab.models.posteriors):
                gaussian | uniform (same variance; its KL is a Monte-Carlo estimate)
    prior       p(z) (genlab.models.priors): standard_normal | vamp (components, init_mean,
                init_std) | mog (components, mean_spread, init_std); the learned priors have no
                closed-form KL, so the KL is the Monte-Carlo estimate log q(z|x) - log p(z)
    objective   what it trains on (genlab.models.objectives): elbo (beta) | iwae (k) | elbo_k (k)
                | named_elbo (beta, supervised_weight)
`conditional` makes it a conditional VAE (preset model=cvae): q(z | x, y) and p(x | z, y) for the
data's class labels y (genlab.models.conditional; needs data that declares ClassLabels).
`named_factors` ties the first latent units to named factors of the data (genlab.models.named),
with `labelled_fraction` of the training images labelled (chosen by `labelled_seed`).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext

import torch
from torch import Tensor

from genlab.capabilities import Encoder
from genlab.config import require
from genlab.models.common import (
    FAMILIES,
    GenerativeModule,
    eval_means,
    eval_noise,
    interleave,
    log_eval,
    log_this_step,
)
from genlab.models.conditional import (
    ClassCondition,
    LabelledDecoder,
    LabelledEncoder,
    check_labels,
    cycle_labels,
    num_classes_rule,
    require_class_data,
)
from genlab.models.likelihood import LIKELIHOODS
from genlab.models.named import NamedUnits, labelled_fraction_rule, sweep, traverse
from genlab.models.objectives import VAE_OBJECTIVES
from genlab.models.posteriors import POSTERIORS
from genlab.models.posteriors import Uniform as UniformPosterior
from genlab.models.priors import PRIORS, VampPrior
from genlab.nets import NETS
from genlab.seeding import ExampleNoise
from genlab.settings import (
    Settings,
    flag,
    nonnegative_int,
    positive,
    positive_int,
    setting,
)

MANIFOLD_SIDE = 12  # the 2-D manifold grid: 12 x 12 decoded points


def _loglik_images(value, key: str) -> None:
    require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0), key,
            "null (the whole test split) or a positive integer", value)


def _loglik_samples(value, key: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
            "an integer >= 0 (0 skips the test log-likelihood)", value)


@dataclasses.dataclass
class VAESettings(Settings):
    latent_dim: int = positive_int(16)
    net: str | dict = "conv"
    likelihood: str | dict = "bernoulli"
    posterior: str | dict = "gaussian"
    prior: str | dict = "standard_normal"
    objective: str | dict = "elbo"
    lr: float = positive(1e-3)
    # test/loglik: importance-sampled log p(x), loglik_samples posterior samples per image over the
    # first loglik_images test images (None: all), decoded loglik_chunk images x samples at once
    loglik_samples: int = setting(1000, _loglik_samples)
    loglik_images: int | None = setting(1000, _loglik_images)
    loglik_chunk: int = positive_int(8192)
    n_grid: int = positive_int(64)
    named_factors: dict | None = None  # checked by genlab.models.named.NamedUnits
    labelled_fraction: float = setting(1.0, labelled_fraction_rule)
    labelled_seed: int = nonnegative_int(0)
    conditional: bool = flag(False)  # q(z | x, y), p(x | z, y) for the data's class labels y
    num_classes: int | None = setting(None, num_classes_rule)  # the data's (conf: genlab_num_classes)

    def validate(self, key: str) -> None:
        require(not self.conditional or self.num_classes is not None, f"{key}.conditional",
                "false on data without class labels (model.num_classes=null); a conditional VAE "
                "needs data that declares ClassLabels (data=digits | fashion_mnist | mnist)", True)
        require(not (self.conditional and self.named_factors), f"{key}.named_factors",
                "null with model.conditional=true (named units are read from unlabelled images)",
                self.named_factors)


@FAMILIES.register("vae")
class VAE(GenerativeModule, Encoder):
    # with `conditional`, a model also declares ClassConditional (it then holds num_classes); with
    # `named_factors`, NamedGeneration (it then holds named_factor_kinds)
    Settings = VAESettings

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        net = NETS.build(s.net, "model.net")
        self.condition = ClassCondition(s.num_classes) if s.conditional else None
        if self.condition is None:
            self.encoder = net.encoder(image_shape, 2 * s.latent_dim)
            self.decoder = net.decoder(s.latent_dim, image_shape)
        else:  # the one-hot label: num_classes more input planes, num_classes more code units
            self.num_classes = s.num_classes  # declares ClassConditional (genlab.capabilities)
            c, h, w = image_shape
            self.encoder = LabelledEncoder(net.encoder((c + s.num_classes, h, w), 2 * s.latent_dim),
                                           self.condition)
            self.decoder = LabelledDecoder(net.decoder(s.latent_dim + s.num_classes, image_shape),
                                           self.condition)
        self.likelihood = LIKELIHOODS.build(s.likelihood, "model.likelihood")
        self.q = POSTERIORS.build(s.posterior, "model.posterior")
        # every prior gets the same context; a learned one (vamp) scores z with the VAE's own
        # encoder and posterior family, the standard normal ignores them
        self.prior = PRIORS.build(s.prior, "model.prior", latent_dim=s.latent_dim,
                                  image_shape=self.image_shape, posterior_fn=self.posterior, q=self.q)
        # the VampPrior's components are q's family: boxes for the uniform posterior, whose KL is
        # +inf for any draw outside every box, so that pairing cannot train
        require(not (isinstance(self.prior, VampPrior) and self.condition is not None), "model.prior",
                "standard_normal | mog with model.conditional=true (the VampPrior encodes its "
                "pseudo-inputs, which have no class label)", "vamp")
        require(not (isinstance(self.prior, VampPrior) and isinstance(self.q, UniformPosterior)),
                "model.prior", "standard_normal | mog with model.posterior=uniform (the VampPrior's "
                "box components leave the KL infinite)", "vamp")
        self.objective = VAE_OBJECTIVES.build(s.objective, "model.objective")
        self.named = (NamedUnits(s.named_factors, s.latent_dim, s.labelled_fraction, s.labelled_seed)
                      if s.named_factors is not None else None)
        if self.named is not None:  # declares NamedGeneration (genlab.capabilities)
            self.named_factor_kinds = self.named.kinds()
        require(self.named is not None or not isinstance(self.objective, VAE_OBJECTIVES["named_elbo"]),
                "model.objective", "elbo | iwae | elbo_k without model.named_factors (named_elbo "
                "supervises the named units)", self.objective.registry_name)
        self.save_settings(s, net=net, likelihood=self.likelihood, posterior=self.q, prior=self.prior,
                           objective=self.objective)
        self.means = eval_means(["elbo", "recon", "kl", "loglik", "loglik_elbo", "iwae",
                                 *(self.named.metrics() if self.named else [])])

    # -- the model ----------------------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of q(z | x), each [B, D]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def codes(self, x: Tensor) -> Tensor:
        """The posterior mean: what disentanglement scores and the linear probe read."""
        return self.posterior(x)[0]

    @property
    def posterior_family(self) -> str:
        """q(z | x)'s family by name (Encoder): model.posterior, gaussian | uniform."""
        return self.q.registry_name

    def unit_noise(self, mu: Tensor, k: int | None = None,
                   generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """The reparameterisation noise eps with unit variance, shape [B, D] or [k, B, D] (the
        k draws of an image in one call). Drawn from `generator` when given (evaluations: a
        torch.Generator, or ExampleNoise, one per image), else from the training stream."""
        shape = mu.shape if k is None else (k, *mu.shape)
        return self.q.noise(shape, generator, batch_dim=0 if k is None else 1, dtype=mu.dtype, device=mu.device)

    def sample_z(self, mu: Tensor, std: Tensor, k: int | None = None,
                 generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """Reparameterised z = mu + std * eps, shape [B, D] or [k, B, D] (eps: unit_noise)."""
        return mu + std * self.unit_noise(mu, k, generator)

    def log_q(self, z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """log q(z | x) summed over latent dimensions."""
        return self.q.log_prob(z, mu, std)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior.log_prob(z)

    # the Encoder protocol's view of the prior (latent diagnostics)
    prior_log_prob = log_prior

    def prior_sample(self, n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        return self.prior.sample(n, self.device, generator, dtype)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def recon_log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        return self.likelihood.log_prob(x, out)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | ExampleNoise | None = None,
                   posterior: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Single-sample ELBO terms per image: recon = log p(x|z), kl = KL(q(z|x) || p(z)).
        `posterior`: q(z|x)'s (mean, std) when the caller has computed them already."""
        mu, std = self.posterior(x) if posterior is None else posterior
        z = self.sample_z(mu, std, generator=generator)
        recon = self.recon_log_likelihood(x, self.decode(z))
        kl = self.q.kl(z, mu, std, self.prior)
        return {"elbo": recon - kl, "recon": recon, "kl": kl}

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | ExampleNoise | None = None,
                    posterior: tuple[Tensor, Tensor] | None = None, eps: Tensor | None = None) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k posterior samples z_i: [k, B]. The posterior
        (mu, std) and the noise eps [k, B, D] are computed and drawn here unless given."""
        mu, std = self.posterior(x) if posterior is None else posterior
        z = mu + std * (self.unit_noise(mu, k, generator) if eps is None else eps)
        out = self.decode(z.flatten(0, 1)).unflatten(0, (k, x.shape[0]))
        recon = self.recon_log_likelihood(x.expand(k, *x.shape).flatten(0, 1),
                                          out.flatten(0, 1)).view(k, -1)
        return recon + self.log_prior(z) - self.log_q(z, mu, std)

    def iwae_bound(self, x: Tensor, k: int,
                   generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """log (1/k) sum_i w_i, the importance-weighted bound per image [B]; k=1 is the ELBO."""
        return torch.logsumexp(self.log_weights(x, k, generator), 0) - math.log(k)

    @torch.no_grad()
    def log_likelihood_estimate(self, x: Tensor, k: int,
                                generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """Importance-sampled log p(x) with k samples from q(z|x), decoded in chunks that fit
        memory. The k draws of each image are made at once, so the chunks do not change them.
        A stochastic lower bound that tightens as k grows; always >= the ELBO in expectation."""
        per_chunk = max(1, self.hparams.loglik_chunk // x.shape[0])
        mu, std = self.posterior(x)
        eps = self.unit_noise(mu, k, generator)
        chunks = [self.log_weights(x, len(e), posterior=(mu, std), eps=e)
                  for e in eps.split(per_chunk)]
        return torch.logsumexp(torch.cat(chunks, 0), 0) - math.log(k)

    @torch.no_grad()
    def generate(self, n: int, z: Tensor | None = None) -> Tensor:
        """n images from the prior, as decoder means in [0, 1]; a conditional VAE's of the classes
        0, 1, ..., num_classes - 1 in turn (genlab.models.conditional.cycle_labels)."""
        if z is None:
            z = self.prior.sample(n, self.device)
        if self.condition is not None:
            return self.generate_class(cycle_labels(len(z), self.num_classes, self.device), z)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def generate_named(self, values) -> Tensor:
        """Images decoded from prior draws with the named units set to the commanded codes
        (NamedGeneration): values maps factor names to codes [n, units] (circle: (cos, sin))."""
        n = len(next(iter(values.values())))
        z = self.named.command(self.prior.sample(n, self.device), values)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def generate_class(self, labels: Tensor, z: Tensor | None = None) -> Tensor:
        """A conditional VAE's images of the requested classes (ClassConditional), decoded from
        prior draws z (or the given z, one per label)."""
        require(self.condition is not None, "model.conditional", "true to generate given classes", False)
        labels = check_labels(labels, self.num_classes).to(self.device)
        z = self.prior.sample(len(labels), self.device) if z is None else z
        with self.condition.given(labels):
            return self.likelihood.mean(self.decode(z))

    def labelled(self, labels: Tensor | None):
        """The span in which a conditional VAE's networks read these labels (a no-op otherwise)."""
        return self.condition.given(labels) if self.condition is not None else nullcontext()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at each image's posterior mean, in [0, 1] (Encoder). A conditional
        VAE reads each image's label here: call it inside `labelled(labels)`."""
        return self.likelihood.mean(self.decode(self.posterior(x)[0]))

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 10) -> Tensor:
        """Decoded straight lines between the posterior means of a[i] and b[i]: [len(a)*steps, ...]."""
        za, zb = self.posterior(a)[0], self.posterior(b)[0]
        t = torch.linspace(0, 1, steps, device=za.device).view(1, steps, 1)
        z = (za.unsqueeze(1) * (1 - t) + zb.unsqueeze(1) * t).flatten(0, 1)
        return self.likelihood.mean(self.decode(z))

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample: `interpolate` (n rows of `steps` images between two encoded test images)
        and `reconstruct` (n test images next to their reconstructions); none for a conditional
        VAE, whose encoder needs each test image's label (genlab-sample gives images alone)."""
        if self.condition is not None:
            return {}

        def interpolate():
            x = real_fn(2 * n)
            return self.interpolate(x[:n], x[n:], steps)

        def reconstruct():
            x = real_fn(n)
            return interleave(x, self.reconstruct(x))

        return {"interpolate": interpolate, "reconstruct": reconstruct}

    @torch.no_grad()
    def manifold(self, side: int = MANIFOLD_SIDE) -> Tensor:
        """A 2-D latent space's learned manifold (Kingma & Welling 2014, Fig. 4): decoded z on a
        side x side grid of the prior's quantiles 0.05..0.95 in each unit, z_1 rising left to
        right and z_2 rising bottom to top; [side * side, C, H, W], row by row."""
        if self.hparams.latent_dim != 2:
            raise ValueError(f"the manifold grid needs model.latent_dim=2, not {self.hparams.latent_dim}")
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side, device=self.device))
        z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
        return self.generate(side * side, z=torch.stack([z1.flatten(), z2.flatten()], dim=1))

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """Reconstructions for the sample-grid callback (which draws the prior samples itself),
        with a 2-D latent space the manifold grid, and with named factors their traversals."""
        n = min(len(real), self.hparams.n_grid)
        # a conditional VAE encodes an image with its label, which the real grid batch lacks
        grids = ({"reconstruction": interleave(real[: n // 2], self.reconstruct(real[: n // 2]))}
                 if self.condition is None else {})
        if self.hparams.latent_dim == 2:
            grids["manifold"] = self.manifold()
        for name in self.named.units if self.named is not None else ():
            # one traversal per named factor: 8 images (rows), its units swept over 8 values
            grids[f"traversal_{name}"] = traverse(self, real[:8], *sweep(self, name, 8))
        return grids

    # -- Lightning ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.condition is not None:
            require_class_data(self.trainer.datamodule, self.num_classes, "model.conditional=true")
        if self.named is not None:
            self.named.bind_data(self.trainer.datamodule)

    def on_fit_start(self):
        """A run chooses its checkpoints by the validation value of the bound it trains (val/iwae
        for the IWAE), never by a bound it does not optimise; val/iwae exists only for that run."""
        trained, name = self.objective.bound_metric, self.objective.registry_name
        k = getattr(self.objective.settings, "k", None)
        for ckpt in self.trainer.checkpoint_callbacks:
            monitor = getattr(ckpt, "monitor", None)
            require(not (trained == "val/iwae" and monitor == "val/elbo"), "objective.metric",
                    f"val/iwae (model=vae's objective then) or another metric than val/elbo: "
                    f"model.objective={name} trains the {k}-sample bound", monitor)
            require(not (trained != "val/iwae" and monitor == "val/iwae"), "objective.metric",
                    "a metric the run logs; val/iwae needs model.objective=iwae", monitor)

    def training_step(self, batch, batch_idx):
        with self.labelled(batch[1] if self.condition is not None else None):
            loss, logs = self.objective.loss(self, batch)
        if log_this_step(self):
            self.log("train/loss", loss.detach(), prog_bar=True)
            for name, value in logs.items():
                self.log(f"train/{name}", value.detach())
        return loss

    # evaluation noise: one generator per image, keyed by its index in the split (eval_noise)
    def _named_errors(self, x: Tensor, factors: Tensor) -> dict[str, Tensor]:
        return self.named.errors(self.codes(x), factors) if self.named is not None else {}

    def validation_step(self, batch, batch_idx):
        x, factors, index = batch
        with self.labelled(factors):
            values = self.elbo_terms(x, eval_noise("val", index))
            values.update(self.objective.eval_values(self, x, index))
        log_eval(self, "val", values)
        if self.named is not None:
            log_eval(self, "val", self._named_errors(x, factors))

    def test_step(self, batch, batch_idx):
        x, factors, index = batch
        with self.labelled(factors):
            values = self.elbo_terms(x, eval_noise("test", index))
        # the importance-sampled estimate costs loglik_samples decoder passes per image, so it
        # covers the test images of index < loglik_images (all when null), however many processes
        n = self.hparams.loglik_images
        keep = index < n if n is not None else torch.ones_like(index, dtype=torch.bool)
        if self.hparams.loglik_samples and keep.any():
            noise = eval_noise("test/loglik", index[keep])
            with self.labelled(factors[keep] if self.condition is not None else None):
                values["loglik"] = self.log_likelihood_estimate(x[keep], self.hparams.loglik_samples, noise)
            values["loglik_elbo"] = values["elbo"][keep]
        log_eval(self, "test", values)
        if self.named is not None:
            log_eval(self, "test", self._named_errors(x, factors))

    def configure_optimizers(self):
        return self.adam(self.parameters(), lr=self.hparams.lr)
