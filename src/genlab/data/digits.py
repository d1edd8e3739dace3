"""scikit-learn's handwritten digits: 1,797 images of 8x8 with 17 grey levels, shipped offline.

There is no official test split; a fixed permutation (independent of the run seed) keeps the last
297 images apart as the test set, so every run of every sweep sees the same test images.
"""

from __future__ import annotations

import torch

from genlab.data.base import DATASETS, ClassLabelled

TEST_SIZE = 297


def load_digits_tensors():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float()  # values 0..16
    x = (x * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1797))
    test, train = perm[:TEST_SIZE], perm[TEST_SIZE:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


@DATASETS.register("digits")
class DigitsDataModule(ClassLabelled):
    fid_extractor = "genlab-digits-cnn"  # the default FID feature extractor (genlab.metrics.extractors)
    image_shape = (1, 8, 8)
    num_classes = 10

    def load(self):
        return load_digits_tensors()
