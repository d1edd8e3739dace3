"""Read W&B offline run files, so tests can check that the numbers we log really reach W&B.

wandb has no public reader for offline runs, so this module decodes the file itself. The layout
(learned from files written by wandb 0.31, whose Go core writes them):

    file   := header block*
    header := b":W&B"  magic:uint16le=0xBEE1  version:uint8=0        (7 bytes, file offset 0)
    block  := chunk* zero-padding?          32 KiB each, counted from file offset 0 (header included)
    chunk  := crc32:uint32le  length:uint16le  type:uint8  data[length]
              type FULL=1 | FIRST=2 | MIDDLE=3 | LAST=4; a record split over blocks is FIRST MIDDLE* LAST

This is LevelDB's log format, except that the checksum is zlib's plain CRC-32 of the type byte
followed by the data (LevelDB uses a masked CRC-32C). Each reassembled record is a serialized
`wandb.proto.wandb_internal_pb2.Record`.

wandb 0.31 writes every history/summary item with `nested_key` (even flat ones such as
["val/elbo"]), and explodes media into one item per field: ["samples", "_type"], ["samples",
"path"], ... `history()` folds those back into one dict per key, so an image logged under
"samples" reads back as {"_type": "image-file", "path": "media/images/...png", ...}.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

from wandb.proto.wandb_internal_pb2 import Record

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(RuntimeError):
    """The file is not a W&B run file, or is corrupt (not merely cut short)."""


def read_records(path: str | Path) -> list[Record]:
    """Every complete record in a .wandb file, in order.

    A file cut short (a run that crashed or is still being written) yields the records that were
    complete before the cut, with a warning. Anything else that is wrong (not a W&B file, a
    checksum mismatch, a chunk crossing its block) raises WandbFileError naming the byte offset.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < FILE_HEADER.size:
        raise WandbFileError(f"{path}: {len(data)} bytes, too short for a W&B run file header")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if (ident, magic) != (FILE_IDENT, FILE_MAGIC):
        raise WandbFileError(f"{path}: not a W&B run file (starts with {data[:7]!r}, expected "
                             f"{FILE_HEADER.pack(FILE_IDENT, FILE_MAGIC, FILE_VERSION)!r})")
    if version != FILE_VERSION:
        raise WandbFileError(f"{path}: W&B file format version {version}, this reader knows "
                             f"version {FILE_VERSION}")

    records: list[Record] = []
    pending: bytearray | None = None  # parts of a record split over blocks, FIRST seen, LAST not yet
    off = FILE_HEADER.size
    while off < len(data):
        block_left = BLOCK_SIZE - off % BLOCK_SIZE
        if block_left < CHUNK_HEADER.size:
            off += block_left  # a block tail too short for a chunk header is zero padding
            continue
        if off + CHUNK_HEADER.size > len(data):
            _warn_truncated(path, off)
            break
        crc, length, kind = CHUNK_HEADER.unpack_from(data, off)
        start, end = off + CHUNK_HEADER.size, off + CHUNK_HEADER.size + length
        if CHUNK_HEADER.size + length > block_left:
            raise WandbFileError(f"{path}: corrupt chunk at byte {off}: length {length} runs past "
                                 f"its block")
        if end > len(data):
            _warn_truncated(path, off)
            break
        chunk = data[start:end]
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            raise WandbFileError(f"{path}: checksum mismatch in chunk at byte {off}")
        off = end

        if kind == FULL and pending is None:
            records.append(_parse(path, chunk, off))
        elif kind == FIRST and pending is None:
            pending = bytearray(chunk)
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            records.append(_parse(path, bytes(pending + chunk), off))
            pending = None
        else:
            raise WandbFileError(f"{path}: unexpected chunk type {kind} at byte {off - length - 7}"
                                 f" ({'inside' if pending is not None else 'outside'} a split record)")
    else:
        if pending is not None:  # the file ends between a FIRST and its LAST
            _warn_truncated(path, off)
    return records


def _parse(path: Path, payload: bytes, end: int) -> Record:
    try:
        return Record.FromString(payload)
    except Exception as e:  # protobuf's DecodeError; checksum passed, so this is a format change
        raise WandbFileError(f"{path}: record ending at byte {end} is not a wandb Record: {e}") from e


def _warn_truncated(path: Path, off: int) -> None:
    warnings.warn(f"{path}: truncated at byte {off}; returning the complete records before it",
                  stacklevel=3)


def find_wandb_files(root: str | Path) -> list[Path]:
    """Every W&B run file (`.../wandb/offline-run-*/run-*.wandb`, or an online run's) under root."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.glob("**/run-*.wandb"))


def _run_file(run: str | Path) -> Path:
    """A .wandb file itself, or the one file under a folder (a run folder, a genlab run dir)."""
    files = find_wandb_files(run)
    if len(files) != 1:
        found = ", ".join(map(str, files)) or "none"
        raise WandbFileError(f"{run}: expected exactly one W&B run file under it, found {found}")
    return files[0]


def _fold(items, into: dict[str, Any]) -> dict[str, Any]:
    """Apply a sequence of (key | nested_key, value_json) items to a nested dict."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = into
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(item.value_json)
    return into


def _remove(items, from_: dict[str, Any]) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = from_
        for k in keys[:-1]:
            node = node.get(k, {})
        node.pop(keys[-1], None)


def history(run: str | Path) -> list[dict[str, Any]]:
    """One dict per logged step, in order: {'val/elbo': -200.0, '_step': 0, 'samples': {...}, ...}."""
    return [_fold(r.history.item, {}) for r in read_records(_run_file(run))
            if r.WhichOneof("record_type") == "history"]


def config(run: str | Path) -> dict[str, Any]:
    """The run's config as the user set it (wandb's own `_wandb` entry left out).

    wandb.init(config=...) arrives inside the run record; later updates (Lightning's
    log_hyperparams) arrive as config records. Both are applied in file order.
    """
    cfg: dict[str, Any] = {}
    for r in read_records(_run_file(run)):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            _fold(r.run.config.update, cfg)
            _remove(r.run.config.remove, cfg)
        elif kind == "config":
            _fold(r.config.update, cfg)
            _remove(r.config.remove, cfg)
    cfg.pop("_wandb", None)
    return cfg


def run_id(run: str | Path) -> str:
    """The W&B run id a run file belongs to (from its run record); a resumed run's attempts each
    write their own file under the same id."""
    for r in read_records(_run_file(run)):
        if r.WhichOneof("record_type") == "run":
            return r.run.run_id
    raise WandbFileError(f"{run}: no run record")


def summary(run: str | Path) -> dict[str, Any]:
    """The run's final summary (last logged value of each key, unless overwritten)."""
    out: dict[str, Any] = {}
    for r in read_records(_run_file(run)):
        if r.WhichOneof("record_type") == "summary":
            _fold(r.summary.update, out)
            _remove(r.summary.remove, out)
    return out


def media_files(run: str | Path, value: dict[str, Any]) -> list[Path]:
    """The files a logged media value points to, as paths in the run folder's files/.

    A single wandb.Image logs {'_type': 'image-file', 'path': ...}; a list of images (what
    Lightning's WandbLogger.log_image logs) logs {'_type': 'images/separated', 'filenames': [...]}.
    """
    files_dir = _run_file(run).parent / "files"
    names = [value["path"]] if "path" in value else list(value.get("filenames", []))
    return [files_dir / n for n in names]
