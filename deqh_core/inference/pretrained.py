"""Models shipped in the package, by name: use one without training anything.

Every command and API that takes a checkpoint also takes a shipped model's name
(:func:`resolve_checkpoint`): ``deqh scf qh9-small water.xyz``,
``deqh_core.pyscf.init_guess(mol, model="qh9-small")``. A shipped model is a *released*
checkpoint (:func:`deqh_core.training.checkpoint.release_checkpoint`): the weights, the config
and training domain of its run, and a ``card`` naming its training data and license, which
``deqh checkpoint info`` and ``deqh models`` show. How each was made is in docs/pretrained.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deqh_core.util.errors import CheckpointError
from deqh_core.util.files import not_found

SHIPPED_DIR = Path(__file__).parent / "shipped"
"""The folder of the shipped checkpoint files (a data package, no ``__init__.py``)."""


@dataclass(frozen=True)
class ShippedModel:
    """A checkpoint in the package: its name, file (in :data:`SHIPPED_DIR`) and one line."""

    name: str
    file: str
    summary: str

    @property
    def path(self) -> Path:
        return SHIPPED_DIR / self.file


SHIPPED: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            "qh9-small",
            "qh9-small.pt",
            "QHNet (2 layers, 16 channels) correcting the minao prior H0 in the Löwdin "
            "basis; B3LYP/def2-SVP (QH9's recipe), H C N O F",
        ),
    )
}
"""The public registry of shipped models, by name."""


def resolve_checkpoint(model: str | Path) -> Path:
    """The checkpoint file ``model`` names: an existing file as given, else a shipped model.

    Raises:
        CheckpointError: neither a file nor a shipped model (naming both), or a shipped model
            whose file is missing from this installation.
    """
    path = Path(model)
    if path.is_file():
        return path
    shipped = SHIPPED.get(str(model))
    if shipped is None:
        raise CheckpointError(
            f"{not_found(path, 'checkpoint')}; nor is it a shipped model "
            f"({', '.join(SHIPPED)}; `deqh models` lists them)"
        )
    if not shipped.path.is_file():
        raise CheckpointError(
            f"shipped model {shipped.name!r}: its file {shipped.path} is missing from this "
            "installation (reinstall deqh)"
        )
    return shipped.path


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is one of the shipped checkpoint files (outputs never go beside it)."""
    return Path(path).resolve().parent == SHIPPED_DIR.resolve()


def run_folder(model: str | Path) -> Path:
    """Where a command writes by default for ``model``: the checkpoint's folder, or for a
    shipped model the folder ``./<name>`` (never inside the installed package)."""
    path = resolve_checkpoint(model)
    return Path(path.stem) if is_shipped(path) else path.parent  # a shipped file's stem: its name
