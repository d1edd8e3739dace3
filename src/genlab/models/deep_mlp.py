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

It is a classifier, not a generative model: it has no `generate`, so its runs switch the sample
grids and the sample-quality evaluation off (conf/experiment/gradient_noise.yaml does).

Logged: train/loss (cross-entropy, nats per image), val/loss, val/acc, test/loss, test/acc
(fractions in [0, 1]), and test/success: 1 when test/acc >= success_acc, else 0, so its mean over
seeds in genlab-report is the success rate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genlab.config import require, require_choice, require_positive
from genlab.models.common import GenerativeModule, eval_means, log_eval, log_this_step

OPTIMIZERS = ("sgd", "adam")
INITS = ("simple", "he")


class DeepMLP(GenerativeModule):
    def __init__(
        self,
        image_shape: list[int],
        n_classes: int = 10,
        depth: int = 20,
        width: int = 50,
        init: str = "simple",
        init_std: float = 0.1,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.0,
        success_acc: float = 0.5,
    ):
        super().__init__()
        require_positive(depth, "model.depth", integer=True)
        require_positive(width, "model.width", integer=True)
        require_positive(n_classes, "model.n_classes", integer=True)
        require_choice(init, "model.init", INITS)
        require_positive(init_std, "model.init_std")
        require_choice(optimizer, "model.optimizer", OPTIMIZERS)
        require_positive(lr, "model.lr")
        require(0 <= momentum < 1, "model.momentum", "a number in [0, 1)", momentum)
        require(0 <= success_acc <= 1, "model.success_acc", "a number in [0, 1]", success_acc)
        self.save_hyperparameters()
        sizes = [math.prod(image_shape)] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], n_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                std = init_std if init == "simple" else math.sqrt(2.0 / m.in_features)
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
        self.means = eval_means(["loss", "acc"])

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
        if self.hparams.optimizer == "adam":
            return self.adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
