"""A very deep fully-connected classifier: the test bed of the gradient-noise study.

Neelakantan et al. 2015 ("Adding gradient noise improves learning for very deep networks") train a
20-layer fully-connected ReLU network of 50 units per layer on MNIST with plain gradient descent,
from a poor initialisation, with and without annealed gradient noise (genlab.callbacks.gradient_noise).
This module is that network for genlab's image data: `depth` hidden layers of `width` ReLU units,
zero biases, and weights drawn from N(0, init_std^2) with init=simple (the paper's poor "simple
init": with std 0.1 and 50 units each layer scales the signal by about 0.1 * sqrt(50 / 2) = 0.5,
so 20 layers pass almost nothing forward or back) or from He et al.'s N(0, 2 / fan_in) with
init=he, which keeps the signal's scale through ReLU layers. (PyTorch's default initialisation
shrinks it by about 0.4 a layer and starves 20 layers as well.)

The update rule is the `model.optimizer` component (genlab.optim.OPTIMIZERS: `sgd` with its
`momentum`, 0 by default: the paper's plain gradient descent; or `adam`); `init` picks one of INITS.

It is a classifier, not a generative model: it has no `generate`, so its runs switch the sample
grids and the sample-quality evaluation off (conf/experiment/gradient_noise.yaml does).

Logged: train/loss (cross-entropy, nats per image), val/loss, val/acc, test/loss, test/acc
(fractions in [0, 1]), and test/success: 1 when test/acc >= success_acc, else 0, so its mean over
seeds in genlab-report is the success rate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from torch import Tensor, nn
from torch.nn import functional as F

from genlab.models.common import FAMILIES, GenerativeModule, eval_means, log_eval, log_this_step
from genlab.optim import OPTIMIZERS
from genlab.settings import Settings, choice, fraction, positive, positive_int

# init: the standard deviation of a linear layer's N(0, std^2) weights, given init_std
INITS: dict[str, Callable[[nn.Linear, float], float]] = {
    "simple": lambda layer, init_std: init_std,  # the paper's poor "simple init"
    "he": lambda layer, init_std: math.sqrt(2.0 / layer.in_features),  # He et al.: 2 / fan_in
}


@dataclasses.dataclass
class DeepMLPSettings(Settings):
    n_classes: int = positive_int(10)
    depth: int = positive_int(20)
    width: int = positive_int(50)
    init: str = choice("simple", list(INITS))
    init_std: float = positive(0.1)  # init=simple only
    optimizer: str | dict = "sgd"  # genlab.optim.OPTIMIZERS: sgd (momentum) | adam
    lr: float = positive(0.01)
    success_acc: float = fraction(0.5, closed_low=True)


@FAMILIES.register("deep_mlp")
class DeepMLP(GenerativeModule):
    Settings = DeepMLPSettings

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        self.optimizer = OPTIMIZERS.build(s.optimizer, "model.optimizer")
        sizes = [math.prod(self.image_shape)] + [s.width] * s.depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], s.n_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)
        std = INITS[s.init]
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std(m, s.init_std))
                nn.init.zeros_(m.bias)
        self.means = eval_means(["loss", "acc"])
        self.save_settings(s, optimizer=self.optimizer)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _terms(self, batch) -> dict[str, Tensor]:
        x, y = batch[:2]  # evaluation batches also carry indices
        logits = self(x)
        return {"loss": F.cross_entropy(logits, y, reduction="none"),
                "acc": (logits.argmax(1) == y).float()}

    def training_step(self, batch, batch_idx):
        loss = self._terms(batch)["loss"].mean()
        if log_this_step(self):
            self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        log_eval(self, "val", self._terms(batch))

    def test_step(self, batch, batch_idx):
        log_eval(self, "test", self._terms(batch))

    def on_test_epoch_end(self):
        # success is a property of the whole test set's accuracy, logged once per run
        acc = self.means["test_acc"].compute()
        self.log("test/success", (acc >= self.hparams.success_acc).float())

    def configure_optimizers(self):
        return self.optimizer.make(self.parameters(), lr=self.hparams.lr, optim=self.optim)
