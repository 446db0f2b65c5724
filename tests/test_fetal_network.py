"""The DeepMedic-compatible network: variable parity with the real checkpoints and numerical
parity with an independent NumPy computation (reference/FETAL_DEEPMEDIC.md §4, §5.3, §5.4)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from shiva_bids.pipelines.fetal import checkpoint as ckpt  # noqa: E402
from shiva_bids.pipelines.fetal.network import DeepMedicNet, check_layout  # noqa: E402
from shiva_bids.pipelines.fetal.synthetic import random_weights, write_checkpoint  # noqa: E402

# Bessel counts N of §4.1, in the order of the BN index j = 0..23.
BESSEL_N = [60835, 46305, 34295, 24565, 16875, 10985, 6655,
            24565, 16875, 10985, 6655, 3645, 1715, 625,
            20480, 13720, 8640, 5000, 2560, 1080, 320,
            6655, 3645, 3645]


@pytest.mark.parametrize("net_name", ["bdn", "cgm"])
def test_variables_equal_the_checkpoint_net_variables(shared_dir, net_name):
    prefix = shared_dir / "fixtures" / "dhcp_fetal" / net_name / f"{net_name}.model.ckpt"
    listed = {n: tuple(s) for n, s in tf.train.list_variables(str(prefix)) if n.startswith("net/")}
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    net = DeepMedicNet()
    mine = {v.name.removesuffix(":0"): v for v in net.vars.values()}
    assert len(listed) == len(mine) == 199
    assert set(mine) == set(listed)
    for name, var in mine.items():
        assert tuple(var.shape) == listed[name], name
        assert var.dtype == dtypes[name], name
    # our own index reader agrees with TensorFlow's, and the layout check accepts it
    index = ckpt.read_index(prefix)
    assert {n: e.shape for n, e in index.entries.items()} == {
        n: tuple(s) for n, s in tf.train.list_variables(str(prefix))}
    assert index.expected_data_size == 24_781_076
    assert sum(e.size for n, e in index.entries.items() if n.startswith("net/")) == 8_735_340
    check_layout(index)


# -- an independent NumPy implementation of the §5 maths, names built from the §4 rules --------
def _name(base, k):
    return f"net/{base}" if k == 0 else f"net/{base}_{k}"


def _conv(x, w):
    """VALID cross-correlation: x (D, D, D, Cin), w (Cout, Cin, k, k, k)."""
    k = w.shape[2]
    o = x.shape[0] - k + 1
    out = np.zeros((o, o, o, w.shape[0]))
    for a, b, c in itertools.product(range(k), repeat=3):
        out += x[a:a + o, b:b + o, c:c + o] @ w[:, :, a, b, c].T
    return out


def _bn_prelu(x, t, j):
    mu = t[_name("muBnsForRollingAverage", j)].mean(axis=0)
    n = BESSEL_N[j]
    var = n / (n - 1) * t[_name("varBnsForRollingAverage", j)].mean(axis=0)
    y = t[_name("gBn", j)] * (x - mu) / np.sqrt(var + np.finfo(np.float32).tiny) \
        + t[_name("bBn", j)]
    a = t[_name("aPrelu", j)]
    return np.where(y > 0, y, a * y)


def _residual(y, source):
    s, o = source.shape[0], y.shape[0]
    st = (s - 1) // 2 - (o - 1) // 2
    crop = source[st:st + o, st:st + o, st:st + o]
    out = y.copy()
    out[..., :crop.shape[-1]] += crop
    return out


def _pathway(x, t, p):
    inputs = []
    for layer in range(1, 9):
        inputs.append(x)
        if layer == 1:
            h = x + t[_name("b", p)]
        else:
            h = _bn_prelu(x, t, 7 * p + layer - 2)
        y = _conv(h, t[_name("W", 8 * p + layer - 1)])
        if layer in (4, 6, 8):
            y = _residual(y, inputs[-2])
        x = y
    return x


def numpy_forward(t, normal, sub3, sub5):
    n = _pathway(normal, t, 0)
    o = n.shape[0]
    ups = []
    for p, (f, x) in enumerate(((3, sub3), (5, sub5)), start=1):
        low = _pathway(x, t, p)
        up = low.repeat(f, 0).repeat(f, 1).repeat(f, 2)[:o, :o, :o]
        ups.append(up)
    concat = np.concatenate([n] + ups, axis=-1)
    padded = np.pad(concat, [(1, 1)] * 3 + [(0, 0)], mode="symmetric")
    fc1 = _conv(_bn_prelu(padded, t, 21), t["net/W_24"])
    fc2 = _conv(0.5 * _bn_prelu(fc1, t, 22), t["net/W_25"])
    fc2 = _residual(fc2, concat)
    scores = _conv(0.5 * _bn_prelu(fc2, t, 23), t["net/W_26"]) + t["net/b_3"]
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "net.model.ckpt",
                            random_weights(seed=7))


@pytest.mark.parametrize("segment, count", [(25, 2), (27, 1)])
def test_network_matches_numpy_reference(random_checkpoint, segment, count):
    """Small segments keep the NumPy side cheap; the maths is the same at 45^3 (the end-to-end
    test runs that size). 25^3 is the training geometry (9^3 out, x3 19^3, x5 18^3); at 27^3
    both upsampled pathways are cropped (x3: 4 -> 12 -> 11, x5: 3 -> 15 -> 11)."""
    net = DeepMedicNet().load(random_checkpoint)
    reader = tf.train.load_checkpoint(str(random_checkpoint))
    tensors = {n: reader.get_tensor(n).astype(np.float64)
               for n, _ in tf.train.list_variables(str(random_checkpoint))}
    out = segment - 16
    sizes = (segment, 17 + -(-out // 3) - 1, 17 + -(-out // 5) - 1)
    rng = np.random.default_rng(segment)
    inputs = [rng.normal(size=(count, s, s, s, 1)).astype(np.float32) for s in sizes]
    got = net(*inputs).numpy()
    assert got.shape == (count, out, out, out, 2)
    for i in range(count):
        want = numpy_forward(tensors, *(x[i].astype(np.float64) for x in inputs))
        assert np.abs(got[i] - want).max() <= 1e-5
        assert want[..., 1].std() > 0.01  # not saturated: the comparison is meaningful
