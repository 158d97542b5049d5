"""The backend seam: which implementation computes an equivariant op, and how a module holds it.

Every op of :mod:`deqh_core.ops` is an :class:`EquivariantOp`: a module that owns the op's
learned parameters, in one layout shared by all backends, and delegates the arithmetic to a
*kernel* built for the backend in use. Kernels hold only constants derived from the irreps
(Clebsch-Gordan tables, index tables, e3nn's generated code), so they are kept out of the state
dict: a checkpoint holds the parameters alone and loads whatever backend computes them.

Backends (the ``ops`` field of a backbone config):

* ``fused`` -- deqh's own kernels: few, large batched matmuls per op; fastest on a CPU.
* ``e3nn`` -- plain e3nn modules (``o3.TensorProduct``, ``o3.Linear``, ``nn.Gate``, ...): the
  reference every other backend is tested against.
* ``cueq`` -- NVIDIA cuEquivariance (``pip install deqh[cueq]``) for tensor products and linear
  layers, in e3nn's ``mul_ir`` layout; its CUDA kernels need ``cuequivariance-ops-torch-cu12``
  or ``-cu13`` besides, else it runs its pure-PyTorch ("naive") path. Elementwise ops (gates,
  norms) have no cuEquivariance kernel and use ``fused``'s.
* ``auto`` (default) -- resolved per device when the op first runs there: ``fused`` on a CPU;
  on CUDA ``cueq`` when cuEquivariance's CUDA kernels are installed, else ``e3nn`` (without its
  kernels cuEquivariance computes one einsum per path, e3nn's own strategy, so it has nothing
  to add).

``use_backend(model, name)`` switches every op of a model in place (weights untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import cache
from typing import ClassVar, Literal

import torch
from torch import nn

from deqh_core.util.errors import DeqhError

OpsBackend = Literal["auto", "fused", "e3nn", "cueq"]
BACKENDS: tuple[str, ...] = ("fused", "e3nn", "cueq")


class OpsError(DeqhError):
    """A backend that is unknown or not installed."""


@cache
def cueq_available() -> bool:
    """cuEquivariance's PyTorch front end imports (any device; pure PyTorch on a CPU)."""
    try:
        import cuequivariance  # noqa: F401
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def cueq_kernels() -> bool:
    """cuEquivariance's CUDA kernels (``cuequivariance-ops-torch-cu*``) import."""
    if not cueq_available():
        return False
    try:
        import cuequivariance_ops_torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(backend: str, device: torch.device | str) -> str:
    """The concrete backend for ``backend`` (``auto`` or a name) on ``device``."""
    if backend == "auto":
        if torch.device(device).type == "cuda":
            return "cueq" if cueq_kernels() else "e3nn"
        return "fused"
    if backend not in BACKENDS:
        raise OpsError(f"unknown ops backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if backend == "cueq" and not cueq_available():
        raise OpsError(
            "ops backend 'cueq' needs cuEquivariance: pip install 'deqh[cueq]' (and, for its "
            "CUDA kernels, cuequivariance-ops-torch-cu12 or -cu13 matching your CUDA)"
        )
    return backend


def cueq_method(device: torch.device, wanted: str) -> str:
    """cuEquivariance execution method: its CUDA kernel ``wanted`` where it can run, else its
    pure-PyTorch ``naive`` path (CPUs, or no kernels installed)."""
    return wanted if device.type == "cuda" and cueq_kernels() else "naive"


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class EquivariantOp(nn.Module):
    """Base of the ops: parameters here, arithmetic in a per-backend kernel.

    Subclasses set ``kernels`` (backend name -> kernel class) and ``self.kernel_args`` (what a
    kernel class is built from), own their parameters, and call ``self.kernel(x)`` in
    ``forward`` to get the kernel for the input's device. ``legacy_buffers`` names state-dict
    entries that checkpoints written before the seam hold (derived constants); they are
    ignored on load.

    The kernel is built lazily on first use (on the input's device and dtype) and dropped when
    the module is moved or cast, so it always sits with the parameters; under ``auto`` a
    change of device type also picks that device's backend.
    """

    kernels: ClassVar[dict[str, Callable[..., nn.Module]]] = {}

    def __init__(self, backend: OpsBackend = "auto"):
        super().__init__()
        if backend != "auto":
            resolve(backend, "cpu")  # unknown or not installed: a clear error now
        self.backend: str = backend
        self.kernel_args: tuple = ()
        self.legacy_buffers: tuple[str, ...] = ()
        self._drop_kernel()

    def _drop_kernel(self) -> None:
        # a plain attribute, not a submodule: kernels stay out of state_dict() and parameters()
        object.__setattr__(self, "_kernel", None)
        object.__setattr__(self, "_kernel_device", None)

    def set_backend(self, backend: OpsBackend) -> None:
        """Compute with ``backend`` from the next call on (weights untouched)."""
        if backend != "auto":
            resolve(backend, "cpu")
        self.backend = backend
        self._drop_kernel()

    @property
    def active_backend(self) -> str | None:
        """The backend of the kernel built last (None before the first call)."""
        kernel = self._kernel
        return None if kernel is None else kernel.backend

    def kernel(self, like: torch.Tensor) -> nn.Module:
        """The kernel for tensors like ``like`` (built on first use)."""
        kernel = self._kernel
        if kernel is None or (self.backend == "auto" and like.device.type != self._kernel_device):
            name = resolve(self.backend, like.device)
            name = name if name in self.kernels else "fused"  # e.g. no cueq gate: fused's
            dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
            with _default_dtype(dtype):  # constants computed in the inputs' precision
                kernel = self.kernels[name](*self.kernel_args, device=like.device, dtype=dtype)
            kernel.backend = name
            object.__setattr__(self, "_kernel", kernel.to(like.device, dtype))
            object.__setattr__(self, "_kernel_device", like.device.type)
        return kernel

    def _apply(self, fn, recurse=True):
        # .to(), .double(), .cuda(), ...: the kernel is rebuilt where and as the inputs come
        self._drop_kernel()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.legacy_buffers:
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        active = self.active_backend
        return f"backend={self.backend}" + (f" ({active})" if self.backend == "auto" else "")


def use_backend(model: nn.Module, backend: OpsBackend) -> nn.Module:
    """Switch every :class:`EquivariantOp` of ``model`` to ``backend``; returns ``model``."""
    if backend != "auto":
        resolve(backend, "cpu")  # unknown or not installed: fail before touching the model
    for module in model.modules():
        if isinstance(module, EquivariantOp):
            module.set_backend(backend)
    return model


def active_backends(model: nn.Module) -> dict[str, int]:
    """``{backend: number of ops}`` of the kernels the last forward pass used."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, EquivariantOp) and module.active_backend is not None:
            counts[module.active_backend] = counts.get(module.active_backend, 0) + 1
    return counts
