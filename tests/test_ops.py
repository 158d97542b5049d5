"""The ops seam: every backend against e3nn, op by op, in every weight mode the models use
(outputs and gradients, float32 and float64), with one weight layout; e3nn's
``assert_equivariant`` on every op and QHNet layer; backend resolution. The CUDA variants are
marked ``gpu`` (``pytest -m gpu``) and skipped where there is no GPU; the ``cueq`` variants are
skipped where cuEquivariance is not installed."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from deqh_backbones.qhnet.attention import TransBlock
from deqh_backbones.qhnet.conv import ConvNetLayer
from deqh_backbones.qhnet.interaction import PairNetLayer, SelfNetLayer
from deqh_core import ops
from deqh_core.ops import (
    ChannelTensorProduct,
    EquivariantLayerNorm,
    EquivariantLinear,
    ExponentialBernstein,
    NormGate,
    ScalarGate,
    SphericalTensorProduct,
    interaction_irreps,
    natural_irreps,
)
from deqh_core.ops.backends import OpsError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUEQ = pytest.mark.skipif(not ops.cueq_available(), reason="cuEquivariance is not installed")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]
CANDIDATES = [pytest.param("fused"), pytest.param("cueq", marks=CUEQ)]
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}
pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(make, backend: str, device: str, dtype: torch.dtype):
    """The op on ``backend`` and the e3nn reference, with the same parameters (the reference's
    state dict loaded into the candidate: one layout for all backends)."""
    torch.manual_seed(0)
    reference = make("e3nn").to(device, dtype)
    with torch.no_grad():  # the biases start at zero: make them count
        for name, p in reference.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    candidate = make(backend).to(device, dtype)
    candidate.load_state_dict(reference.state_dict())
    return candidate, reference


def _same(candidate, reference, inputs: list[torch.Tensor], call, dtype) -> None:
    """Equal outputs, and equal gradients for one random cotangent with respect to the inputs
    and every parameter."""
    out, expected = call(candidate, *inputs), call(reference, *inputs)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(out, expected, **tolerance)
    cotangent = torch.randn_like(out)
    wrt = [*inputs, *candidate.parameters()]
    grads = torch.autograd.grad(out, wrt, cotangent, allow_unused=True)
    wrt_ref = [*inputs, *reference.parameters()]
    expected_grads = torch.autograd.grad(expected, wrt_ref, cotangent, allow_unused=True)
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, **tolerance)


def _randn(*shape, device, dtype):
    return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)


# ---------------------------------------------------------------------------------------------
# parity with e3nn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CANDIDATES)
@pytest.mark.parametrize("irreps_in", ["3x0e+3x1o+3x2e", "4x0e+2x1o+2x2e+2x3o", "3x0e"])
def test_spherical_tensor_product(device, dtype, backend, irreps_in):
    """Per-sample weights (the only mode: radial MLPs give them); one multiplicity group (the
    ConvNet layers), several (the TransBlocks) and scalars only (the first ConvNet layer)."""
    sh = o3.Irreps.spherical_harmonics(3)
    keep = [o3.Irrep(ir) for ir in ("0e", "1o", "2e")]
    candidate, reference = _pair(
        lambda b: SphericalTensorProduct(irreps_in, sh, keep, backend=b), backend, device, dtype
    )
    n = 7
    x = _randn(n, candidate.irreps_in.dim, device=device, dtype=dtype)
    w = _randn(n, candidate.weight_numel, device=device, dtype=dtype)
    vec = torch.randn(n, 3, device=device, dtype=dtype, requires_grad=True)

    def call(op, x, w, vec):
        y = o3.spherical_harmonics(sh, vec, normalize=True, normalization="component")
        return op(x, op.prepare(y), w)

    _same(candidate, reference, [x, w, vec], call, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CANDIDATES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-sample"])
def test_channel_tensor_product(device, dtype, backend, shared):
    """Shared weights (the self interaction) and per-sample weights (the pair interaction)."""
    irreps_in = o3.Irreps("3x0e+3x1o+3x2e+3x3o")
    irreps_out = o3.Irreps("3x0e+3x1o+3x2e+3x1e+3x2o")
    candidate, reference = _pair(
        lambda b: ChannelTensorProduct(irreps_in, irreps_out, shared, backend=b),
        backend,
        device,
        dtype,
    )
    n = 5
    x1, x2 = (_randn(n, irreps_in.dim, device=device, dtype=dtype) for _ in range(2))
    if shared:
        _same(candidate, reference, [x1, x2], lambda op, a, b: op(a, b), dtype)
    else:
        w = _randn(n, candidate.weight_numel, device=device, dtype=dtype)
        _same(candidate, reference, [x1, x2, w], lambda op, a, b, w: op(a, b, w), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CANDIDATES)
@pytest.mark.parametrize(
    ("irreps_in", "irreps_out", "shared", "biases"),
    [
        ("4x0e+3x1o+2x2e", "5x0e+2x1o+3x2e", True, True),
        # repeated types and an output no input reaches (TransBlock's merge, the heads' input)
        ("4x0e+3x1o+2x0e+2x2e", "5x0e+2x1o+1x0e+2x3o", True, True),
        ("4x0e+3x1o+2x2e", "5x0e+2x1o+3x2e", True, False),
        ("4x0e+3x1o+2x2e+2x1e", "2x0e+2x1o+1x2e+3x1e", False, False),  # the heads
        # odd scalars beside even ones: biases belong to 0e alone
        ("4x0e+3x0o+2x1o", "2x0e+3x0o+2x1o", True, True),
        ("4x0e+3x0o+2x1o", "2x0e+2x0o+2x1o", False, True),
    ],
)
def test_linear(device, dtype, backend, irreps_in, irreps_out, shared, biases):
    candidate, reference = _pair(
        lambda b: EquivariantLinear(irreps_in, irreps_out, biases, shared, backend=b),
        backend,
        device,
        dtype,
    )
    n = 6
    x = _randn(n, candidate.irreps_in.dim, device=device, dtype=dtype)
    if shared:
        _same(candidate, reference, [x], lambda op, x: op(x), dtype)
    else:
        w = _randn(n, candidate.weight_numel, device=device, dtype=dtype)
        _same(candidate, reference, [x, w], lambda op, x, w: op(x, w), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CANDIDATES)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda b: ScalarGate("4x0e", "3x1o+2x2e", backend=b), id="scalar-gate"),
        pytest.param(lambda b: NormGate("4x0e+3x1o+2x2e", backend=b), id="norm-gate"),
        pytest.param(lambda b: NormGate("4x0e+3x1o+2x3o", hidden=5, backend=b), id="norm-gate-h"),
        pytest.param(lambda b: EquivariantLayerNorm("4x0e+3x1o+2x2e", backend=b), id="layer-norm"),
    ],
)
def test_elementwise(device, dtype, backend, make):
    candidate, reference = _pair(make, backend, device, dtype)
    irreps = getattr(candidate, "irreps_in", None) or candidate.channels.irreps
    x = _randn(6, irreps.dim, device=device, dtype=dtype)
    _same(candidate, reference, [x], lambda op, x: op(x), dtype)


def test_norm_gate_is_smooth_at_zero(float64):
    """The l > 0 parts of DEQHNet's filter inputs are often exactly zero: finite gradients."""
    for backend in ("fused", "e3nn"):
        gate = NormGate("2x0e+2x1o", backend=backend)
        x = torch.zeros(3, 8, requires_grad=True)
        (grad,) = torch.autograd.grad(gate(x).sum(), x)
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# equivariance (e3nn's assert_equivariant), per op and per QHNet layer

HIDDEN = natural_irreps(4, 2)  # 4x0e+4x1o+4x2e
SH = o3.Irreps.spherical_harmonics(2)
BACKENDS = [pytest.param("fused"), pytest.param("e3nn"), pytest.param("cueq", marks=CUEQ)]
N_ATOMS = 4


def _graph(device):
    i, j = torch.meshgrid(torch.arange(N_ATOMS), torch.arange(N_ATOMS), indexing="ij")
    keep = i != j
    return i[keep].to(device), j[keep].to(device)


def _edge_inputs(vec, rbf_module):
    sh = o3.spherical_harmonics(SH, vec, normalize=True, normalization="component")
    return sh, rbf_module(vec.norm(dim=-1))


def _check(func, args, irreps_in, irreps_out):
    assert_equivariant(func, args, irreps_in, irreps_out, do_translation=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_are_equivariant(float64, device, backend):
    torch.manual_seed(0)
    irreps = o3.Irreps("3x0e+2x1o+2x2e+1x3o")
    lin = EquivariantLinear(irreps, "2x0e+3x1o+1x2e+2x1e", biases=True, backend=backend)
    tp = SphericalTensorProduct(irreps, SH, ["0e", "1o", "2e"], backend=backend)
    ctp = ChannelTensorProduct("2x0e+2x1o+2x2e", "2x0e+2x1e+2x2o", True, backend=backend)
    gate = NormGate(irreps, backend=backend)
    sgate = ScalarGate("3x0e", "2x1o+1x2e", backend=backend)
    norm = EquivariantLayerNorm(irreps, backend=backend)
    for op in (lin, tp, ctp, gate, sgate, norm):
        op.to(device)
    x = torch.randn(5, irreps.dim, device=device)
    w = torch.randn(5, tp.weight_numel, device=device)
    vec = torch.randn(5, 3, device=device)

    def spherical(x, vec):
        y = o3.spherical_harmonics(SH, vec, normalize=True, normalization="component")
        return tp(x, tp.prepare(y), w)

    _check(lin, [x], [irreps], [lin.irreps_out])
    _check(spherical, [x, vec], [irreps, "cartesian_points"], [tp.irreps_out])
    c = torch.randn(5, ctp.irreps_in.dim, device=device)
    _check(ctp, [c, c.roll(1, 0)], [ctp.irreps_in] * 2, [ctp.irreps_out])
    _check(gate, [x], [irreps], [irreps])
    g = torch.randn(5, sgate.irreps_in.dim, device=device)
    _check(sgate, [g], [sgate.irreps_in], [sgate.irreps_out])
    _check(norm, [x], [irreps], [irreps])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_qhnet_layers_are_equivariant(float64, device, backend):
    """ConvNet (first and later layers), self and pair interaction, TransBlock."""
    torch.manual_seed(0)
    dst, src = _graph(device)
    rbf = ExponentialBernstein(6, 5.0).to(device)
    first = ConvNetLayer(o3.Irreps("4x0e"), HIDDEN, SH, 6, 8)
    conv = ConvNetLayer(HIDDEN, HIDDEN, SH, 6, 8)
    out = interaction_irreps(HIDDEN, o3.Irreps("1x0e+1x1e+1x2o"), 4)
    selfs, pairs = SelfNetLayer(HIDDEN, out), PairNetLayer(HIDDEN, out, 6, 8)
    filter_irreps = o3.Irreps("4x0e+2x1o+2x2e")
    block = TransBlock(filter_irreps, SH, 6, 8, 2)
    for layer in (first, conv, selfs, pairs, block):
        ops.use_backend(layer, backend).to(device)
    vec = torch.randn(len(dst), 3, device=device)

    def convnet(layer):
        def f(x, vec):
            sh, edge_rbf = _edge_inputs(vec, rbf)
            return layer(x, dst, src, layer.tp.prepare(sh), edge_rbf)

        return f

    def pair(x, vec):
        return pairs(x, dst, src, pairs.radial(_edge_inputs(vec, rbf)[1]), None)

    def transblock(x, vec):
        sh, edge_rbf = _edge_inputs(vec, rbf)
        return block(x, dst, src, block.tp.prepare(sh), block.radial(edge_rbf))

    x0 = torch.randn(N_ATOMS, 4, device=device)
    x = torch.randn(N_ATOMS, HIDDEN.dim, device=device)
    u = torch.randn(N_ATOMS, filter_irreps.dim, device=device)
    _check(convnet(first), [x0, vec], ["4x0e", "cartesian_points"], [HIDDEN])
    _check(convnet(conv), [x, vec], [HIDDEN, "cartesian_points"], [HIDDEN])
    _check(lambda x: selfs(x, None), [x], [HIDDEN], [out])
    _check(pair, [x, vec], [HIDDEN, "cartesian_points"], [out])
    _check(transblock, [u, vec], [filter_irreps, "cartesian_points"], [filter_irreps])
    assert set(ops.active_backends(block)) <= {backend, "fused"}


# ---------------------------------------------------------------------------------------------
# backends: resolution and switching


def test_auto_resolves_per_device(monkeypatch):
    assert ops.resolve("auto", "cpu") == "fused"
    monkeypatch.setattr("deqh_core.ops.backends.cueq_kernels", lambda: False)
    assert ops.resolve("auto", "cuda") == "e3nn"
    monkeypatch.setattr("deqh_core.ops.backends.cueq_kernels", lambda: True)
    assert ops.resolve("auto", "cuda") == "cueq"
    with pytest.raises(OpsError, match="unknown ops backend 'cuda'"):
        ops.resolve("cuda", "cpu")
    monkeypatch.setattr("deqh_core.ops.backends.cueq_available", lambda: False)
    with pytest.raises(OpsError, match=r"pip install 'deqh\[cueq\]'"):
        EquivariantLinear("2x0e", "2x0e", backend="cueq")


def test_switching_backends_keeps_weights_and_state_dict(float64):
    torch.manual_seed(0)
    block = TransBlock(o3.Irreps("4x0e+2x1o+2x2e"), SH, 6, 8, 2)
    keys = list(block.state_dict())
    dst, src = _graph("cpu")
    vec = torch.randn(len(dst), 3)
    rbf = ExponentialBernstein(6, 5.0)
    sh, edge_rbf = _edge_inputs(vec, rbf)
    u = torch.randn(N_ATOMS, block.dim)
    outputs = {}
    for backend in ("fused", "e3nn"):
        ops.use_backend(block, backend)
        outputs[backend] = block(u, dst, src, block.tp.prepare(sh), block.radial(edge_rbf))
        assert ops.active_backends(block) == {backend: 9}
        assert list(block.state_dict()) == keys  # kernels hold no state
    torch.testing.assert_close(outputs["fused"], outputs["e3nn"])
    ops.use_backend(block, "fused")
    prepared = ops.use_backend(TransBlock(block.irreps, SH, 6, 8, 2), "e3nn").tp.prepare(sh)
    with pytest.raises(ValueError, match="prepared by the 'e3nn' backend"):
        block(u, dst, src, prepared, block.radial(edge_rbf))
