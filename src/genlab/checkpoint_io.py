"""Checkpoints written whole or not at all (conf/trainer/default.yaml hands RunCheckpointIO to the
Trainer as a plugin; every checkpoint Lightning saves goes through it).

Lightning's TorchCheckpointIO serialises the checkpoint in memory and writes it through fsspec,
which writes to a temporary file in the system's temporary folder and then moves it to its name.
When the two folders are on different filesystems, that move is a copy that opens the destination
first: a disk that fills up during the copy leaves a truncated checkpoint, and when the file was
last.ckpt the good one it replaced is gone as well. RunCheckpointIO writes the bytes to a temporary
file beside the checkpoint and renames it (genlab.runs.atomic_path): the old file or the new one,
never part of one.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from genlab.runs import atomic_write_bytes


class RunCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:  # as TorchCheckpointIO: no options to take
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer())
