"""``deqh models``: the models shipped in the package, usable without training."""

from __future__ import annotations

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)


def models_command() -> None:
    """List the shipped models: name, size, model, basis and elements, training data, license.

    Any command that takes a checkpoint takes one of these names instead (deqh scf qh9-small
    water.xyz), as does deqh_core.pyscf.init_guess(mol, model=NAME).
    """
    # imported when the command runs, so that `deqh --help` stays fast
    from rich.table import Table

    from deqh_core.data.domain import TrainingDomain
    from deqh_core.inference.pretrained import SHIPPED
    from deqh_core.training.checkpoint import load_checkpoint
    from deqh_core.util.errors import CheckpointError

    table = Table(title="deqh models (shipped)")
    for column in ("name", "MB", "model", "trained on", "domain", "license"):
        table.add_column(column)
    for model in SHIPPED.values():
        try:
            state = load_checkpoint(model.path)
        except CheckpointError as err:
            table.add_row(model.name, "-", f"unreadable: {err}", "", "", "")
            continue
        card, describe = state.get("card") or {}, state["describe"]
        domain = TrainingDomain.from_dict(state.get("domain"))
        table.add_row(
            model.name,
            f"{model.path.stat().st_size / 1e6:.2f}",
            model.summary,
            str(card.get("training_data", "?")),
            _domain(describe["basis"], domain),
            str(card.get("license", "?")),
        )
    Console(width=200).print(table)


def _domain(basis: str, domain) -> str:
    # imported when the command runs, so that `deqh --help` stays fast
    from deqh_core.ao.basis import symbol

    if domain is None:
        return basis
    elements = " ".join(symbol(z) for z in domain.elements)
    return f"{basis}; {elements}; {domain.atoms[0]}-{domain.atoms[1]} atoms, charge {domain.charge}"
