"""Checkpoint checks before loading (reference/FETAL_DEEPMEDIC.md §3): one clear line for a
missing, truncated or corrupt `.data` file and for an index of another network."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from shiva_bids.errors import BadInputError, MissingInputError  # noqa: E402
from shiva_bids.pipelines.fetal import checkpoint as ckpt  # noqa: E402
from shiva_bids.pipelines.fetal.network import DeepMedicNet  # noqa: E402
from shiva_bids.pipelines.fetal.synthetic import random_weights, write_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def weights():
    return random_weights(seed=1)


@pytest.fixture
def checkpoint(tmp_path, weights):
    return write_checkpoint(tmp_path / "bdn" / "bdn.model.ckpt", weights)


def _data(prefix):
    return prefix.parent / (prefix.name + ckpt.DATA_SUFFIX)


def test_good_checkpoint_loads_by_name(checkpoint, weights):
    net = DeepMedicNet().load(checkpoint)
    np.testing.assert_array_equal(net.vars["net/W_24"].numpy(), weights["net/W_24"])
    np.testing.assert_array_equal(net.vars["net/b_3"].numpy(), weights["net/b_3"])


def test_masked_crc32c_matches_tensorflow(checkpoint):
    index = ckpt.read_index(checkpoint)
    ckpt.verify_data(index)  # every entry's checksum as TensorFlow stored it
    assert ckpt.mask_crc32c(0) == 0xA282EAD8


def test_missing_data_file(checkpoint):
    _data(checkpoint).unlink()
    with pytest.raises(MissingInputError, match=r"data file missing"):
        DeepMedicNet().load(checkpoint)


def test_truncated_data_file(checkpoint):
    data = _data(checkpoint)
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[: size // 2])
    with pytest.raises(BadInputError, match=rf"{size // 2:,} bytes, the index expects {size:,}"):
        DeepMedicNet().load(checkpoint)


def _flip_middle_byte(data) -> bytes:
    """Corrupt one byte in the middle of a `.data` file (size unchanged); return the bytes."""
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    return bytes(raw)


def test_corrupt_data_file(checkpoint):
    _flip_middle_byte(_data(checkpoint))
    with pytest.raises(BadInputError, match="CRC32C"):
        DeepMedicNet().load(checkpoint)


def test_index_from_another_network(tmp_path, weights):
    other = dict(weights)
    other["net/W_24"] = np.zeros((250, 150, 1, 1, 1), np.float32)  # another FC1 kernel size
    prefix = write_checkpoint(tmp_path / "other.ckpt", other)
    with pytest.raises(BadInputError, match=r"net/W_24 is float32\[250, 150, 1, 1, 1\]"):
        DeepMedicNet().load(prefix)
    del other["net/W_24"]
    prefix = write_checkpoint(tmp_path / "fewer.ckpt", other)
    with pytest.raises(BadInputError, match="no variable net/W_24"):
        DeepMedicNet().load(prefix)


def test_not_an_index(tmp_path):
    (tmp_path / "x.index").write_bytes(b"not a table" * 10)
    with pytest.raises(BadInputError, match="not a TensorFlow checkpoint index"):
        ckpt.read_index(tmp_path / "x")
    with pytest.raises(MissingInputError, match="cannot read the checkpoint index"):
        ckpt.read_index(tmp_path / "absent")


def test_real_index_with_wrong_data(shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "dhcp_fetal" / "cgm" / "cgm.model.ckpt.index"
    shutil.copy(src, tmp_path / src.name)
    prefix = tmp_path / "cgm.model.ckpt"
    with pytest.raises(MissingInputError, match="data file missing"):
        DeepMedicNet().load(prefix)
    _data(prefix).write_bytes(b"\0" * 1000)
    with pytest.raises(BadInputError, match="1,000 bytes, the index expects 24,781,076"):
        DeepMedicNet().load(prefix)
    _data(prefix).write_bytes(b"\0" * 24_781_076)  # right size, wrong content
    with pytest.raises(BadInputError, match="fails its CRC32C check"):
        DeepMedicNet().load(prefix)


def test_skip_checksum_still_checks_size(checkpoint):
    data = _data(checkpoint)
    raw = _flip_middle_byte(data)
    with pytest.raises(BadInputError, match="cannot read net/.*Checksum does not match"):
        DeepMedicNet().load(checkpoint, verify=False)  # TensorFlow still checks while reading
    data.write_bytes(raw[:-4])
    with pytest.raises(BadInputError, match="truncated or wrong download"):
        DeepMedicNet().load(checkpoint, verify=False)
