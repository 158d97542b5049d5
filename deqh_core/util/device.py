"""Devices and dtypes: where a model runs and how batches get there."""

from __future__ import annotations

import torch

from deqh_core.util.errors import DeqhError

FLOAT_FIELDS = ("pos", "h_diag", "h_off", "s_diag", "s_off", "h0_diag", "h0_off")
"""Floating-point fields of a batch that take the model's dtype (see :func:`to_device`)."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeqhError(f"device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeqhError(f"device {name!r} requested but CUDA is not available here")
    return device


def to_device(batch, device: torch.device, dtype: torch.dtype):
    """Move a batch, casting its floating-point fields (:data:`FLOAT_FIELDS`) to ``dtype``."""
    batch = batch.to(device)
    for key in FLOAT_FIELDS:
        value = getattr(batch, key, None)
        if value is not None:
            setattr(batch, key, value.to(dtype))
    return batch
