"""TF1 name-based checkpoints of the dHCP DeepMedic networks: read the index, verify the data.

A checkpoint is `<prefix>.index` (a table of tensor-bundle entries) plus
`<prefix>.data-00000-of-00001` (the raw tensors). Only the `.index` files are public
(reference/FETAL_DEEPMEDIC.md §3); users supply the 24,781,076-byte `.data` files, so before
anything is loaded the data file is checked against what the index records: its exact size
and the masked CRC32C of every tensor. A truncated or wrong download then fails with one
line naming the file and the problem instead of a TensorFlow traceback.

The index is an SSTable (the LevelDB table format TensorFlow's `lib/io/table` writes) whose
values are `BundleHeaderProto` (key "") and `BundleEntryProto` (one per tensor); it is parsed
here with the protos TensorFlow ships, because TensorFlow's Python API exposes neither the
entries' offsets nor their checksums.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from shiva_bids.errors import BadInputError, MissingInputError

DATA_SUFFIX = ".data-00000-of-00001"
INDEX_SUFFIX = ".index"
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER = 5  # compression type (1 byte) + crc (4 bytes)
_MASK_DELTA = 0xA282EAD8


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data file and what it must hash to."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    size: int
    masked_crc32c: int


@dataclass(frozen=True)
class CheckpointIndex:
    """The parsed `.index` of a single-shard checkpoint."""

    prefix: Path
    entries: dict[str, TensorEntry]

    @property
    def index_path(self) -> Path:
        return Path(f"{self.prefix}{INDEX_SUFFIX}")

    @property
    def data_path(self) -> Path:
        return Path(f"{self.prefix}{DATA_SUFFIX}")

    @property
    def expected_data_size(self) -> int:
        """The data file holds the tensors back to back: its size is the last entry's end."""
        return max((e.offset + e.size for e in self.entries.values()), default=0)


def mask_crc32c(crc: int) -> int:
    """TensorFlow's masked CRC32C (rotate right by 15, add a constant), as stored in indexes."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _block(buf: bytes, offset: int, size: int, where: Path) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one uncompressed table block (prefix-compressed keys)."""
    if offset + size + _BLOCK_TRAILER > len(buf) or buf[offset + size] != 0:
        raise BadInputError(f"{where}: not a TensorFlow checkpoint index (bad or compressed "
                            "table block)")
    block = buf[offset: offset + size]
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    pairs: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos: pos + unshared]
        pos += unshared
        pairs.append((key, block[pos: pos + length]))
        pos += length
    return pairs


def read_index(prefix: Path | str) -> CheckpointIndex:
    """Parse `<prefix>.index`; raises MissingInputError/BadInputError with one line."""
    import tensorflow as tf
    from tensorflow.core.protobuf import tensor_bundle_pb2

    prefix = Path(prefix)
    path = Path(f"{prefix}{INDEX_SUFFIX}")
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise MissingInputError(f"{path}: cannot read the checkpoint index ({exc.strerror})") \
            from exc
    if len(buf) < _FOOTER_SIZE or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != _TABLE_MAGIC:
        raise BadInputError(f"{path}: not a TensorFlow checkpoint index (no table footer)")
    pos = len(buf) - _FOOTER_SIZE
    _, pos = _varint(buf, pos)  # metaindex handle: offset, size (unused)
    _, pos = _varint(buf, pos)
    index_offset, pos = _varint(buf, pos)
    index_size, pos = _varint(buf, pos)
    entries: dict[str, TensorEntry] = {}
    for _, handle in _block(buf, index_offset, index_size, path):
        offset, hpos = _varint(handle, 0)
        size, _ = _varint(handle, hpos)
        for key, value in _block(buf, offset, size, path):
            if key == b"":
                header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                if header.num_shards != 1:
                    raise BadInputError(f"{path}: {header.num_shards} shards; only "
                                        "single-shard checkpoints are supported")
                continue
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
            dtype = np.dtype(tf.dtypes.as_dtype(entry.dtype).as_numpy_dtype)
            name = key.decode()
            entries[name] = TensorEntry(name, dtype, tuple(d.size for d in entry.shape.dim),
                                        entry.offset, entry.size, entry.crc32c)
    return CheckpointIndex(prefix, entries)


def verify_data(index: CheckpointIndex, checksums: bool = True) -> None:
    """Check that the data file exists, its size, and (with `checksums`) every entry's CRC32C.

    Raises MissingInputError when the file is absent and BadInputError on a size or checksum
    mismatch, each with one line saying what to do.
    """
    data = index.data_path
    if not data.is_file():
        raise MissingInputError(f"{data}: checkpoint data file missing (only the .index is "
                                "public; place the .data file beside it)")
    size = data.stat().st_size
    expected = index.expected_data_size
    if size != expected:
        raise BadInputError(f"{data}: {size:,} bytes, the index expects {expected:,} "
                            "(truncated or wrong download)")
    if not checksums:
        return
    with open(data, "rb") as handle:
        for name in sorted(index.entries):
            entry = index.entries[name]
            handle.seek(entry.offset)
            crc = mask_crc32c(google_crc32c.value(handle.read(entry.size)))
            if crc != entry.masked_crc32c:
                raise BadInputError(f"{data}: tensor {name} fails its CRC32C check (corrupt "
                                    "file, or a data file from another checkpoint)")
