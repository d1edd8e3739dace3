"""What a VAE trains on: objective components (`model.objective`, registry VAE_OBJECTIVES).

An objective receives the VAE (its posterior, decoder, likelihood and prior, through the bounds
genlab.models.vae.VAE computes) and a training batch, and returns the loss and the values to log.
`bound_metric` names the validation metric of the bound it trains, which the run's checkpoints
are chosen by (conf/objective/vae.yaml); `eval_values` adds that bound on validation where it is
not the ELBO. Units: nats per image (docs/objectives.md).

    elbo        -(recon - beta * KL): beta = 1 is the plain VAE, other values the beta-VAE; the
                logged train/elbo is always the beta = 1 bound, so runs compare on one scale
    iwae        the importance-weighted bound with k samples (Burda et al. 2016); val/iwae
    elbo_k      the ELBO averaged over k posterior samples (Burda et al.'s k-sample "VAE": the same
                k log weights, their mean in place of the log of their mean)
    named_elbo  elbo plus supervised_weight times the named units' supervised term (needs
                model.named_factors; genlab.models.named)
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from genlab.models.common import eval_noise
from genlab.registry import Component, Registry
from genlab.settings import Settings, nonnegative, positive_int

VAE_OBJECTIVES: Registry[type[VAEObjective]] = Registry("VAE objective", "model.objective")


class VAEObjective(Component):
    bound_metric = "val/elbo"

    def loss(self, vae, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of a batch and the per-batch values to log as train/<name>."""
        raise NotImplementedError

    def eval_values(self, vae, x: Tensor, index: Tensor) -> dict[str, Tensor]:
        """Per-image values of the trained bound on validation images, beside the ELBO's."""
        return {}


@dataclasses.dataclass
class ELBOSettings(Settings):
    beta: float = nonnegative(1.0)  # weight of the KL term; 1 is the plain VAE


def weighted_elbo(terms: dict[str, Tensor], beta: float) -> Tensor:
    return -(terms["recon"] - beta * terms["kl"]).mean()


@VAE_OBJECTIVES.register("elbo")
class ELBO(VAEObjective):
    Settings = ELBOSettings

    def loss(self, vae, batch):
        t = vae.elbo_terms(batch[0])
        return weighted_elbo(t, self.settings.beta), {"elbo": t["elbo"].mean()}


@dataclasses.dataclass
class KSettings(Settings):
    k: int = positive_int(5)  # posterior samples per image


@VAE_OBJECTIVES.register("iwae")
class IWAE(VAEObjective):
    Settings = KSettings
    bound_metric = "val/iwae"

    def loss(self, vae, batch):
        return -vae.iwae_bound(batch[0], self.settings.k).mean(), {}

    def eval_values(self, vae, x, index):
        return {"iwae": vae.iwae_bound(x, self.settings.k, eval_noise("val/iwae", index))}


@VAE_OBJECTIVES.register("elbo_k")
class ElboK(VAEObjective):
    Settings = KSettings

    def loss(self, vae, batch):
        elbo = vae.log_weights(batch[0], self.settings.k).mean()  # over samples and images
        return -elbo, {"elbo": elbo}


@dataclasses.dataclass
class NamedELBOSettings(ELBOSettings):
    supervised_weight: float = nonnegative(100.0)  # 0: the unsupervised VAE with the same metrics


@VAE_OBJECTIVES.register("named_elbo")
class NamedELBO(VAEObjective):
    Settings = NamedELBOSettings

    def loss(self, vae, batch):
        x, factors = batch[0], batch[1]
        mu, std = vae.posterior(x)
        t = vae.elbo_terms(x, posterior=(mu, std))
        supervised = vae.named.supervised_term(mu, std, factors)
        loss = weighted_elbo(t, self.settings.beta)
        if self.settings.supervised_weight:
            loss = loss + self.settings.supervised_weight * supervised
        return loss, {"elbo": t["elbo"].mean(), "supervised": supervised}


__all__ = ["VAE_OBJECTIVES", "ELBO", "ElboK", "IWAE", "NamedELBO", "VAEObjective"]
