"""Variational auto-encoder and its variants as options on one LightningModule.

Units: every ELBO, reconstruction term, KL and log-likelihood is in nats per image, summed over
pixels and latent dimensions and averaged over images. Higher ELBO and log-likelihood are better;
KL is >= 0.

Options: beta weights the KL term in the training loss (beta=1 is the plain VAE; the logged
train/elbo is always the beta=1 bound so runs with different beta compare on one scale);
iwae_k > 1 trains on the importance-weighted bound of Burda et al. 2016 (and validation logs it
as val/iwae, which such a run's checkpoints are chosen by: conf/objective/vae.yaml), elbo_k > 1 on the ELBO
averaged over k posterior samples (their "VAE" with k samples: the same k log weights, their mean
in place of the log of their mean); eps chooses the
reparameterisation noise (gaussian, or uniform with the same variance, which changes the posterior
family, so its KL is a Monte-Carlo estimate with the uniform density rather than the Gaussian
closed form). arch chooses the networks: conv (genlab.nets.conv, base_channels wide) or mlp
(genlab.nets.mlp: `hidden` layer widths with `activation`, the papers' MNIST networks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.capabilities import Encoder
from genlab.config import require, require_choice, require_nonnegative, require_positive
from genlab.models.common import (
    GenerativeModule,
    eval_means,
    eval_noise,
    interleave,
    log_eval,
    log_this_step,
)
from genlab.models.likelihood import LIKELIHOODS, log_likelihood, mean_image
from genlab.nets import ACTIVATIONS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from genlab.seeding import ExampleNoise, draw

EPS = ("gaussian", "uniform")
ARCHS = ("conv", "mlp")
SQRT3 = math.sqrt(3.0)
LOG_2PI = math.log(2 * math.pi)
MANIFOLD_SIDE = 12  # the 2-D manifold grid: 12 x 12 decoded points


class VAE(GenerativeModule, Encoder):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 16,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        std: float = 0.1,
        learn_std: bool = False,
        eps: str = "gaussian",
        iwae_k: int = 1,
        loglik_samples: int = 1000,
        loglik_images: int | None = 1000,
        loglik_chunk: int = 8192,
        lr: float = 1e-3,
        base_channels: int = 32,
        n_grid: int = 64,
        arch: str = "conv",
        hidden: list[int] = (500,),
        activation: str = "tanh",
        elbo_k: int = 1,
    ):
        super().__init__()
        require_positive(latent_dim, "model.latent_dim", integer=True)
        require_nonnegative(beta, "model.beta")
        require_choice(likelihood, "model.likelihood", LIKELIHOODS)
        require_positive(std, "model.std")
        require_choice(eps, "model.eps", EPS)
        require_positive(iwae_k, "model.iwae_k", integer=True)
        require(iwae_k == 1 or beta == 1, "model.beta",
                "1 when model.iwae_k > 1 (the importance-weighted bound has no KL weight)", beta)
        require_positive(elbo_k, "model.elbo_k", integer=True)
        require(elbo_k == 1 or iwae_k == 1, "model.elbo_k",
                "1 when model.iwae_k > 1 (k samples go to one bound or the other)", elbo_k)
        require(elbo_k == 1 or beta == 1, "model.beta",
                "1 when model.elbo_k > 1 (the k-sample ELBO has no KL weight)", beta)
        require(isinstance(loglik_samples, int) and loglik_samples >= 0, "model.loglik_samples",
                "an integer >= 0 (0 skips the test log-likelihood)", loglik_samples)
        require(loglik_images is None or (isinstance(loglik_images, int) and loglik_images > 0),
                "model.loglik_images", "null (the whole test split) or a positive integer",
                loglik_images)
        require_positive(loglik_chunk, "model.loglik_chunk", integer=True)
        require_positive(lr, "model.lr")
        require_choice(arch, "model.arch", ARCHS)
        if arch == "mlp":
            require(isinstance(hidden, list | tuple) and len(hidden) > 0
                    and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden),
                    "model.hidden", "a non-empty list of positive layer widths, e.g. [500]", hidden)
            require_choice(activation, "model.activation", list(ACTIVATIONS))
        hidden = list(hidden)  # a plain list in the checkpoint's hyper-parameters
        self.save_hyperparameters()
        self.image_shape = tuple(image_shape)
        if arch == "conv":
            self.encoder = ConvEncoder(image_shape, 2 * latent_dim, base_channels)
            self.decoder = ConvDecoder(latent_dim, image_shape, base_channels=base_channels)
        else:
            self.encoder = MLPEncoder(image_shape, 2 * latent_dim, hidden, activation)
            self.decoder = MLPDecoder(latent_dim, image_shape, hidden, activation)
        self.log_std = nn.Parameter(torch.tensor(math.log(std)), requires_grad=learn_std)
        self.means = eval_means(["elbo", "recon", "kl", "loglik", "loglik_elbo", "iwae"])

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
        """q(z | x)'s family by name (Encoder): model.eps, gaussian | uniform."""
        return self.hparams.eps

    def unit_noise(self, mu: Tensor, k: int | None = None,
                   generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """The reparameterisation noise eps with unit variance, shape [B, D] or [k, B, D] (the
        k draws of an image in one call). Drawn from `generator` when given (evaluations: a
        torch.Generator, or ExampleNoise, one per image), else from the training stream."""
        shape = mu.shape if k is None else (k, *mu.shape)
        kw = dict(batch_dim=0 if k is None else 1, dtype=mu.dtype, device=mu.device)
        if self.hparams.eps == "gaussian":
            return draw(shape, generator, normal=True, **kw)
        return (draw(shape, generator, **kw) * 2 - 1) * SQRT3

    def sample_z(self, mu: Tensor, std: Tensor, k: int | None = None,
                 generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """Reparameterised z = mu + std * eps, shape [B, D] or [k, B, D] (eps: unit_noise)."""
        return mu + std * self.unit_noise(mu, k, generator)

    def log_q(self, z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """log q(z | x) summed over latent dimensions."""
        if self.hparams.eps == "gaussian":
            return (-0.5 * ((z - mu) / std) ** 2 - std.log() - 0.5 * LOG_2PI).sum(-1)
        inside = ((z - mu).abs() <= SQRT3 * std * (1 + 1e-5)).all(-1)
        log_density = -(torch.log(2 * SQRT3 * std)).sum(-1).expand_as(inside)
        return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))

    @staticmethod
    def log_prior(z: Tensor) -> Tensor:
        return (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def recon_log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        return log_likelihood(x, out, self.hparams.likelihood, self.log_std)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | ExampleNoise | None = None,
                   posterior: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Single-sample ELBO terms per image: recon = log p(x|z), kl = KL(q(z|x) || p(z)).
        `posterior`: q(z|x)'s (mean, std) when the caller has computed them already."""
        mu, std = self.posterior(x) if posterior is None else posterior
        z = self.sample_z(mu, std, generator=generator)
        recon = self.recon_log_likelihood(x, self.decode(z))
        if self.hparams.eps == "gaussian":
            kl = 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum(1)
        else:
            kl = self.log_q(z, mu, std) - self.log_prior(z)
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
        """n images from the prior, as decoder means in [0, 1]."""
        if z is None:
            z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        return mean_image(self.decode(z), self.hparams.likelihood)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return mean_image(self.decode(self.posterior(x)[0]), self.hparams.likelihood)

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 10) -> Tensor:
        """Decoded straight lines between the posterior means of a[i] and b[i]: [len(a)*steps, ...]."""
        za, zb = self.posterior(a)[0], self.posterior(b)[0]
        t = torch.linspace(0, 1, steps, device=za.device).view(1, steps, 1)
        z = (za.unsqueeze(1) * (1 - t) + zb.unsqueeze(1) * t).flatten(0, 1)
        return mean_image(self.decode(z), self.hparams.likelihood)

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample: `interpolate` (n rows of `steps` images between two encoded test images)
        and `reconstruct` (n test images next to their reconstructions)."""
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
        and with a 2-D latent space the manifold grid."""
        n = min(len(real), self.hparams.n_grid)
        grids = {"reconstruction": interleave(real[: n // 2], self.reconstruct(real[: n // 2]))}
        if self.hparams.latent_dim == 2:
            grids["manifold"] = self.manifold()
        return grids

    # -- Lightning ----------------------------------------------------------------------------
    def on_fit_start(self):
        """A run that trains on the k-sample importance-weighted bound chooses its checkpoints by
        that bound on validation (val/iwae), never by the single-sample val/elbo it does not
        optimise; val/iwae exists only for such a run."""
        k = self.hparams.iwae_k
        for ckpt in self.trainer.checkpoint_callbacks:
            monitor = getattr(ckpt, "monitor", None)
            require(not (k > 1 and monitor == "val/elbo"), "objective.metric",
                    f"val/iwae (model=vae's objective then) or another metric than val/elbo: model.iwae_k={k} "
                    f"trains the {k}-sample bound, which val/elbo does not measure", monitor)
            require(not (k == 1 and monitor == "val/iwae"), "objective.metric",
                    "a metric the run logs; val/iwae needs model.iwae_k > 1", monitor)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        if self.hparams.iwae_k > 1:
            bound = self.iwae_bound(x, self.hparams.iwae_k)
            loss, elbo = -bound.mean(), None
        elif self.hparams.elbo_k > 1:
            elbo = self.log_weights(x, self.hparams.elbo_k).mean()  # over samples and images
            loss = -elbo
        else:
            t = self.elbo_terms(x)
            loss = -(t["recon"] - self.hparams.beta * t["kl"]).mean()
            elbo = t["elbo"].mean()
        if log_this_step(self):
            self.log("train/loss", loss.detach(), prog_bar=True)
            if elbo is not None:
                self.log("train/elbo", elbo.detach())
        return loss

    # evaluation noise: one generator per image, keyed by its index in the split (eval_noise)
    def validation_step(self, batch, batch_idx):
        x, _, index = batch
        values = self.elbo_terms(x, eval_noise("val", index))
        if self.hparams.iwae_k > 1:  # the bound this run trains on
            values["iwae"] = self.iwae_bound(x, self.hparams.iwae_k, eval_noise("val/iwae", index))
        log_eval(self, "val", values)

    def test_step(self, batch, batch_idx):
        x, _, index = batch
        values = self.elbo_terms(x, eval_noise("test", index))
        # the importance-sampled estimate costs loglik_samples decoder passes per image, so it
        # covers the test images of index < loglik_images (all when null), however many processes
        n = self.hparams.loglik_images
        keep = index < n if n is not None else torch.ones_like(index, dtype=torch.bool)
        if self.hparams.loglik_samples and keep.any():
            noise = eval_noise("test/loglik", index[keep])
            values["loglik"] = self.log_likelihood_estimate(x[keep], self.hparams.loglik_samples, noise)
            values["loglik_elbo"] = values["elbo"][keep]
        log_eval(self, "test", values)

    def configure_optimizers(self):
        return self.adam(self.parameters(), lr=self.hparams.lr)
