"""Checkpoints of ``deqh train``: what they hold and how they are read without running code.

A checkpoint is a dict written by ``torch.save`` that holds only tensors and plain Python values
(dict, list, tuple, str, int, float, bool, None), so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``: a file a user is handed never executes code. A file that
needs anything else (an arbitrary class or function: pickle's ``GLOBAL``) is refused with
:class:`CheckpointError` before any of it is built.

Keys (``format`` 2):

=============  ================================================================================
``model``      the model's ``state_dict``
``optimizer``, ``scheduler``, ``ema``: their ``state_dict`` (``ema`` None without EMA)
``step``       optimiser steps taken
``best``       the best validation metrics so far
``config``     the resolved :class:`~deqh_core.training.config.TrainConfig` (JSON types)
``describe``   what the weights fit (:meth:`~deqh_core.training.model.HamiltonianModel.describe`)
``split``      the molecule ids of ``train``/``val``/``test``
``data``       the dataset's identity and the labels' recipe
               (:func:`deqh_core.data.domain.dataset_identity`)
``domain``     what the training part covers: elements, sizes, distances, charge
               (:class:`deqh_core.data.domain.TrainingDomain`)
``rng``        torch / numpy / Python / CUDA random states, as tensors and lists
``format``     2 (checkpoints before it have no ``format``, ``data`` or ``domain``)
``card``       released models only (:func:`release_checkpoint`): name, training data, license
=============  ================================================================================

A *released* checkpoint (``deqh checkpoint release``, the models shipped in the package) keeps
only what using the model needs: the weights its validation used as ``model``, no optimiser,
scheduler, EMA or random state, and a ``card`` saying what it is.

Checkpoints written before ``format`` 2 stored numpy's random state as a pickled array;
``deqh checkpoint upgrade OLD NEW`` converts one, reading it with ``weights_only=True`` and an
allow-list of exactly the numpy types such an array needs (:data:`NUMPY_RNG_GLOBALS`), so an
upgrade never runs code either.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqh_core.util.errors import CheckpointError
from deqh_core.util.files import atomic_open, not_found

__all__ = [
    "FORMAT",
    "CheckpointError",
    "evaluation_weights",
    "load_checkpoint",
    "model_difference",
    "release_checkpoint",
    "rng_state",
    "same_model",
    "save_checkpoint",
    "set_rng_state",
    "upgrade_checkpoint",
]

FORMAT = 2


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` atomically: a kill during the write leaves the previous file intact."""
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BUILD = re.compile(r"but got <class '([\w.]+)'>")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a deqh checkpoint, or would need
            unpickling arbitrary objects (then nothing of it was run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(not_found(path, "checkpoint"))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found is None:
            raise CheckpointError(
                f"{path}: not a readable checkpoint (corrupt, or not written by torch.save: "
                f"{_reason(err)})"
            ) from None
        name = found.group(1)
        hint = (
            "If it is a checkpoint of deqh before format 2 (which pickled numpy's random state) "
            f"that you made yourself or otherwise trust, convert it with `deqh checkpoint upgrade "
            f"{path} NEW.pt`"
            if name.startswith("numpy")
            else "deqh never writes such objects: do not load this file"
        )
        raise CheckpointError(
            f"{path}: refused: loading it would unpickle the Python object {name!r}, and "
            f"unpickling can run code; deqh checkpoints hold only tensors and plain values. {hint}"
        ) from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(err)})") from None
    if not isinstance(state, dict) or "model" not in state or "describe" not in state:
        raise CheckpointError(f"{path}: not a deqh checkpoint")
    _check_format(state, path)
    return state


def _check_format(state: dict, path: Path) -> None:
    """Refuse a format this deqh does not know (a newer deqh's, or junk)."""
    written = state.get("format", 1)
    if type(written) is not int or not 1 <= written <= FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {written!r}, but this deqh reads formats 1 to {FORMAT} "
            "(written by a newer deqh? upgrade deqh)"
        )


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _reason(err: Exception) -> str:
    """What is wrong with a file torch could not load, without torch's advice to retry with
    ``weights_only=False`` (which would run the file's code): the weights-only unpickler's own
    finding, else the first sentence of the error."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return " ".join(detail.split()) or type(err).__name__
    return _first_line(err).split(". ")[0]


# what checkpoints written before a model option existed built: that option's default
_DESCRIBE_DEFAULTS = {"prior": "none", "prior_basis": "ao"}


def recorded_model(state: dict) -> dict:
    """The ``describe`` of a checkpoint, with the defaults of options added since it was
    written."""
    return {**_DESCRIBE_DEFAULTS, **state["describe"]}


def same_model(a: dict, b: dict) -> bool:
    """Whether two ``describe`` dicts name the same model (tuples and lists compare equal)."""
    return _plain(a) == _plain(b)


def model_difference(a: dict, b: dict) -> str:
    """Where two ``describe`` dicts differ, key by key: ``"elements: [1, 6, 8] -> [1, 8]"``."""
    a, b = _plain(a), _plain(b)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def _plain(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------
# random states as tensors and plain values


def rng_state() -> dict:
    """The torch, numpy (global), Python and CUDA random states, storable with
    ``weights_only``: numpy's Mersenne-Twister keys as an int64 tensor, Python's state as a
    list."""
    numpy_state = np.random.get_state()  # noqa: NPY002 - the global state is what we restore
    state = {"torch": torch.get_rng_state(), **_storable(numpy_state, random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _storable(numpy_state: tuple, python_state: tuple) -> dict:
    """numpy's and Python's random states as tensors and plain lists (``weights_only``)."""
    kind, keys, pos, has_gauss, gauss = numpy_state
    version, internal, gauss_next = python_state
    return {
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": [int(version), list(internal), gauss_next],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------------------------
# old checkpoints


def _numpy_rng_globals() -> list:
    """The globals a pickled numpy array needs, and nothing else: its reconstructor (under
    numpy 2's module name and numpy 1's, which older checkpoints record), ``ndarray`` and
    ``dtype`` and the dtype of its uint32 keys."""
    rebuild = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever it lives
    return [
        rebuild,
        (rebuild, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


NUMPY_RNG_GLOBALS = _numpy_rng_globals()
"""The allow-list :func:`upgrade_checkpoint` reads format-1 checkpoints with."""


def upgrade_checkpoint(source: str | Path, target: str | Path) -> dict:
    """Convert a checkpoint of deqh before ``format`` 2 into one :func:`load_checkpoint` reads.

    ``source`` is read with ``torch.load(weights_only=True)`` allowing only the numpy types of
    the random state older checkpoints pickled (:data:`NUMPY_RNG_GLOBALS`): a file that needs
    anything else is refused before any of it is built, so nothing in it runs. The dataset
    identity and training domain of format 2 are not recorded (the run's data is not re-read);
    commands that need them say so.

    Raises:
        CheckpointError: missing ``source``, existing ``target``, a file that is not a deqh
            checkpoint, needs other objects, or is already in the current format.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise CheckpointError(not_found(source, "checkpoint"))
    if target.exists():
        raise CheckpointError(f"{target}: exists; choose a new file (nothing was overwritten)")
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err)) or _BUILD.search(str(err))
        if found is None:
            raise CheckpointError(
                f"{source}: not a readable checkpoint (corrupt, or not written by torch.save: "
                f"{_reason(err)})"
            ) from None
        raise CheckpointError(
            f"{source}: refused: it needs the Python object {found.group(1)!r}, which no deqh "
            "checkpoint holds, and unpickling it could run code (nothing of it was run)"
        ) from None
    except Exception as err:
        raise CheckpointError(f"{source}: not a readable checkpoint ({_reason(err)})") from None
    if not isinstance(state, dict) or "model" not in state or "describe" not in state:
        raise CheckpointError(f"{source}: not a deqh checkpoint")
    _check_format(state, Path(source))
    if state.get("format") == FORMAT:
        raise CheckpointError(f"{source}: already in format {FORMAT}; nothing to upgrade")
    state = dict(state)
    rng = state.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        state["rng"] = {**rng, **_storable(rng["numpy"], rng["python"])}
    state["describe"] = _plain(state["describe"])
    state["format"] = FORMAT
    state.setdefault("upgraded_from", str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, target)
    try:
        return load_checkpoint(target)
    except CheckpointError as err:
        target.unlink()
        raise CheckpointError(
            f"{source}: holds objects other than tensors and plain values, so it cannot be "
            f"converted ({err})"
        ) from None


def evaluation_weights(
    state: dict, ema_start_step: int, ema: bool | None = None
) -> tuple[dict, str]:
    """The weights to use a checkpoint's model with, and which they are (``"ema"`` or
    ``"model"``): the EMA weights when the run used EMA and had started averaging, as its
    validation did (``ema=None``), or as ``ema`` says.

    Raises:
        CheckpointError: ``ema=True`` for a run without EMA.
    """
    averaged = state.get("ema")
    if ema and averaged is None:
        raise CheckpointError("the run did not use EMA (optim.ema=false)")
    started = averaged is not None and state.get("step", 0) > ema_start_step
    if not (started if ema is None else bool(ema)):
        return state["model"], "model"
    prefix = "module."  # torch.optim.swa_utils.AveragedModel keeps the model as .module
    return {k[len(prefix) :]: v for k, v in averaged.items() if k.startswith(prefix)}, "ema"


_DROPPED = ("optimizer", "scheduler", "ema", "rng", "best")


def release_checkpoint(source: str | Path, target: str | Path, card: dict) -> dict:
    """Write ``target``: the model of checkpoint ``source`` for use, not for resuming.

    Keeps the config, model description, split, dataset identity and training domain; the
    weights validation used become ``model`` (EMA ones when averaging had started); optimiser,
    scheduler, EMA and random states are dropped (a third of the size or less); absolute paths
    of the training machine (the dataset's, the run folder) are cut to their file names; ``card``
    (plain values: name, training data, license, ...) is stored under ``card``.

    Raises:
        CheckpointError: ``source`` unreadable, or ``target`` exists.
    """
    source, target = Path(source), Path(target)
    state = load_checkpoint(source)
    if target.exists():
        raise CheckpointError(f"{target}: exists; choose a new file (nothing was overwritten)")
    start = int(((state.get("config") or {}).get("optim") or {}).get("ema_start_step", 0))
    weights, which = evaluation_weights(state, start)
    released = {k: v for k, v in state.items() if k not in _DROPPED}
    # a released file travels: absolute paths of the training machine become file names
    if (released.get("data") or {}).get("path"):
        released["data"] = {**released["data"], "path": Path(released["data"]["path"]).name}
    config = released.get("config") or {}
    if (config.get("run") or {}).get("out"):
        run = {**config["run"], "out": Path(config["run"]["out"]).name}
        released["config"] = {**config, "run": run}
    released["model"] = {k: v.detach().clone() for k, v in weights.items()}
    released["ema"] = None
    released["card"] = {**_plain(card), "weights": which, "released_from_step": state.get("step")}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(released, target)
    return load_checkpoint(target)
