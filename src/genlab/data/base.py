"""In-memory image data, batched by index.

Every source keeps its images as a uint8 tensor [N, C, H, W] (or renders them from an index, as
dSprites does). A batch is one fancy-indexing call plus one conversion to float in [0, 1]; there is
no per-item Python and no worker process. When the data fits, it lives on the training device, so
a batch never crosses the bus. Under DDP each rank takes its own shard of one shared permutation
per epoch, all shards of equal length so the ranks stay in step.

Binarised images (`binarize`, for models whose likelihood is over binary pixels, such as the RBM):
each pixel becomes 1 with its grey level as the probability, else 0.
  - none: grey levels (the default).
  - static: one fixed draw per image, made once when the data is set up and seeded by split_seed
    (not the run seed), so every run of a sweep sees the same binary images. torch's CPU generator
    draws it serially, so neither the thread count nor the machine changes it (tests/test_mnist.py).
  - dynamic: a fresh draw for every training batch (the draw is seeded by the run seed, epoch,
    batch and rank, so a resumed run draws what the uninterrupted one drew). Validation and test
    images are drawn once, exactly as with static, so evaluation moves only with the weights and
    static and dynamic runs are tested on the same binary images.
`images(split)` returns what the loaders use, except for dynamic training images, which stay grey
(their expectation). Sources that are binary already (`binary = True`, dSprites) are left alone.

Batches: training batches are (images, labels); validation and test batches are (images, labels,
indices), the indices of the images in their split, which key each image's evaluation noise
(genlab.seeding.ExampleNoise) so that it does not depend on the process or batch the image lands
in. Labels are None for unlabelled sources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.capabilities import BinaryImages, ClassLabels, RealImages
from genlab.compat import batches_completed_this_epoch, lightning_run_seed
from genlab.config import require, require_choice, require_positive
from genlab.seeding import generator_for

# A fetch maps a LongTensor of indices to (images uint8 [B, C, H, W], labels [B, ...] or None).
Fetch = Callable[[Tensor], tuple[Tensor, Tensor | None]]
BINARIZE = ("none", "static", "dynamic")


def binarize_fixed(x: Tensor, seed: int) -> Tensor:
    """One Bernoulli draw per pixel of uint8 images, probability = grey level: uint8 0 / 255.
    Drawn in chunks of images from one seeded generator, so an image's draw depends only on the
    seed and its position, not on memory."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty_like(x)
    for i in range(0, len(x), 4096):
        part = x[i : i + 4096]
        u = torch.rand(part.shape, generator=g) * 255.0  # u < p <=> 255 u < grey level
        out[i : i + 4096] = (u < part).to(torch.uint8) * 255
    return out


class IndexBatches:
    """An iterable of (float images in [0, 1], labels) batches drawn by index from `fetch`, with
    `with_index` (images, labels, indices into the source) batches.

    `epoch` is a callable so that shuffling follows the trainer's epoch counter, which keeps a
    resumed run on the same permutation as an uninterrupted one.
    """

    def __init__(
        self,
        fetch: Fetch,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        consumed: Callable[[], int] | None = None,
        binarize: bool = False,
        with_index: bool = False,
    ):
        self.fetch, self.n, self.batch_size = fetch, n, batch_size
        self.binarize, self.with_index = binarize, with_index
        self.consumed = consumed or (lambda: self._yielded)
        self._yielded, self._skip, self._skip_epoch = 0, 0, None
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.device = torch.device(device)

    def _indices(self) -> Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            order = order[self.rank :: self.world_size][: self._per_rank()]
        return order.to(self.device)

    def _per_rank(self) -> int:
        # Training shards are cut to one length so every rank takes the same number of steps;
        # evaluation shards keep every image (lengths differ by at most one; metrics are sums).
        if self.drop_last:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._indices()
        # a resumed epoch skips the batches it had seen; an epoch it never iterated again (it
        # stopped after its last batch, in validation) leaves the next epoch whole
        start = self._skip if self._skip_epoch == self.epoch() else 0
        self._skip = 0
        for b in range(start, len(self)):
            self._yielded = b + 1
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self.fetch(idx)
            x = x.float().div_(255.0)
            if self.binarize:  # dynamic binarisation: a fresh, reproducible draw per batch
                g = generator_for(self.seed, "binarize", self.epoch(), b, self.rank, device=x.device)
                x = (torch.rand(x.shape, generator=g, device=x.device) < x).float()
            yield (x, y, idx) if self.with_index else (x, y)

    # Lightning saves these with a mid-epoch checkpoint (a preempted run) and restores them
    # before iterating again, so a resumed epoch goes on with the batches it had not seen.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch(), "consumed": self.consumed()}

    def load_state_dict(self, state: dict) -> None:
        self._skip, self._skip_epoch = state["consumed"], state["epoch"]


class InMemoryDataModule(pl.LightningDataModule, RealImages, BinaryImages):
    """Base for every genlab source. Subclasses implement `load()` (or override `fetcher`)."""

    name = "base"
    image_shape: tuple[int, int, int]
    binary = False  # images are 0 / 255 already: data.binarize has nothing to do

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        on_device: bool = True,
        max_device_bytes: int = 2 * 1024**3,
        root: str = "data",
        limit: int | None = None,
        binarize: str = "none",
    ):
        super().__init__()
        require_choice(binarize, "data.binarize", BINARIZE)
        require_positive(batch_size, "data.batch_size", integer=True)
        require(eval_batch_size is None or (isinstance(eval_batch_size, int) and eval_batch_size > 0),
                "data.eval_batch_size", "null or a positive integer", eval_batch_size)
        require(isinstance(val_size, int) and val_size >= 0, "data.val_size", "an integer >= 0", val_size)
        require(limit is None or (isinstance(limit, int) and limit > 0), "data.limit",
                "null or a positive integer", limit)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size, self.split_seed, self.limit = val_size, split_seed, limit
        self.on_device, self.max_device_bytes = on_device, max_device_bytes
        self.root = root
        self.binarize = "none" if self.binary else binarize
        self.splits: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._placed: dict[str, tuple[Tensor, Tensor | None]] = {}

    @property
    def binary_images(self) -> bool:
        """Whether the loaders hand out binary images (BinaryImages): a binary source, or
        data.binarize static or dynamic."""
        return self.binary or self.binarize != "none"

    # -- what a subclass provides ------------------------------------------------------------
    def load(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Return {'train': (x, y), 'test': (x, y)} with x uint8 [N, C, H, W]."""
        raise NotImplementedError

    # -- the shared machinery ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = self.load()
        x, y = raw["train"]
        require(self.val_size < len(x), "data.val_size", f"fewer than the {len(x)} training images",
                self.val_size)
        test = raw["test"]
        x_eval = x
        if self.binarize != "none":
            # drawn before the split, so an image's binary version does not depend on its split
            x_eval = binarize_fixed(x, self.split_seed)
            test = (binarize_fixed(test[0], self.split_seed + 1), test[1])
        x_train = x_eval if self.binarize == "static" else x
        g = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(len(x), generator=g)
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        self.splits = {
            "train": (x_train[train_idx], None if y is None else y[train_idx]),
            "val": (x_eval[val_idx], None if y is None else y[val_idx]),
            "test": test,
        }
        if self.limit:  # debug runs: keep the first `limit` images of every split
            self.splits = {k: (v[0][: self.limit], None if v[1] is None else v[1][: self.limit])
                           for k, v in self.splits.items()}

    def _device(self) -> torch.device:
        trainer = self.trainer
        if trainer is None or not self.on_device:
            return torch.device("cpu")
        device = trainer.strategy.root_device
        total = sum(x.numel() * x.element_size() for x, _ in self.splits.values())
        return device if total <= self.max_device_bytes else torch.device("cpu")

    def fetcher(self, split: str) -> tuple[Fetch, int]:
        """A fetch function for `split` and the number of images in it."""
        if split not in self._placed:  # move each split to the device once
            x, y = self.splits[split]
            device = self._device()
            self._placed[split] = (x.to(device), None if y is None else y.to(device))
        x, y = self._placed[split]

        def fetch(idx: Tensor):
            idx = idx.to(x.device)
            return x[idx], (None if y is None else y[idx])

        return fetch, len(x)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> IndexBatches:
        fetch, n = self.fetcher(split)
        dynamic = split == "train" and self.binarize == "dynamic"
        trainer = self.trainer
        world = 1 if trainer is None else trainer.world_size
        if shuffle:  # training drops incomplete batches: at least one whole batch per rank
            require(n // world >= batch_size, "data.batch_size",
                    f"at most {n // world}, the training images per process", batch_size)
        evaluation = split != "train"  # its batches carry the indices that key its noise
        if trainer is None:  # outside a Trainer (scripts, tests): one process, epoch 0
            return IndexBatches(fetch, n, batch_size, shuffle, seed=self.split_seed,
                                drop_last=shuffle, device=self._device(), binarize=dynamic,
                                with_index=evaluation)
        return IndexBatches(
            fetch, n, batch_size, shuffle,
            seed=lightning_run_seed(),  # the run's seed (seed_everything)
            epoch=lambda: trainer.current_epoch,
            rank=trainer.global_rank,
            world_size=world,
            drop_last=shuffle,
            device=self._device(),
            # the trainer's count, not ours: its fetcher reads one batch ahead of the step
            consumed=(lambda: batches_completed_this_epoch(trainer))
            if shuffle else None,
            binarize=dynamic,
            with_index=evaluation,
        )

    def train_dataloader(self):
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self):
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", False, self.eval_batch_size)

    def fingerprint(self, split: str, n: int) -> str:
        """A short hash that identifies the first `n` images of `split` exactly (FID cache keys
        hold it, so another split_seed, val_size, limit or binarisation never reads a cache made
        for other images). It hashes what the split stores: the images, or for a source that
        renders them (dSprites) what determines them."""
        self.setup()
        stored = self.splits[split][0][:n]
        return hashlib.sha256(stored.contiguous().cpu().numpy().tobytes()).hexdigest()[:12]

    def images(self, split: str, n: int | None = None) -> Tensor:
        """The first `n` images of a split as float in [0, 1] (for metrics and sample grids)."""
        fetch, total = self.fetcher(split)
        idx = torch.arange(total if n is None else min(n, total))
        return fetch(idx)[0].float().div_(255.0)


class ClassLabelled(InMemoryDataModule, ClassLabels):
    """Base for sources whose label is one class index per image (digits, Fashion-MNIST): declares
    ClassLabels. Subclasses set `num_classes`; `load()` returns LongTensor labels [N]."""

    num_classes: int

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' names, in label order; the digits themselves unless a subclass names them."""
        return tuple(str(c) for c in range(self.num_classes))

    def labels(self, split: str, n: int | None = None) -> Tensor:
        """The class labels of the first `n` images of a split (those of `images(split, n)`)."""
        self.setup()
        y = self.splits[split][1]
        return y[: len(y) if n is None else n].long().cpu()
