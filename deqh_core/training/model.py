"""``HamiltonianModel``: a registered backbone built as predictor or DEQ solver from a config."""

from __future__ import annotations

import torch
from pydantic import ValidationError

from deqh_core.ao.basis import AOLayout
from deqh_core.plugins.manager import get_backbone
from deqh_core.solvers.backbone import BackboneError, ReducedSolver
from deqh_core.solvers.deq import DEQConfig, DEQDiagnostics, DEQHamiltonianSolver
from deqh_core.solvers.prior import PriorResidual
from deqh_core.solvers.protocol import Blocks
from deqh_core.training.config import ModelConfig
from deqh_core.util.errors import validation_message


class HamiltonianModel(torch.nn.Module):
    """The thing that is trained: ``forward(batch) -> (Blocks, DEQDiagnostics | None)``.

    ``model.deq`` False: the backbone as predictor (reading S if ``model.reads_s``).
    ``model.deq`` True: the backbone reads the current H and torchdeq finds ``H* = f(H*)``.
    """

    def __init__(self, config: ModelConfig, layout: AOLayout, deq: DEQConfig | None = None):
        super().__init__()
        spec = get_backbone(config.backbone)
        try:
            params = spec.config(**config.params)
        except ValidationError as err:
            problems = validation_message(err, "model.params.")
            raise BackboneError(f"backbone {spec.name!r}: {problems}") from None
        self.spec, self.params, self.config, self.layout = spec, params, config, layout
        full = config.deq and (deq or DEQConfig()).feedback == "full"
        self.feedback = "full" if full else "diagonal"
        solver = ReducedSolver(
            spec, params, layout, reads_h=config.deq, reads_s=config.reads_s, reads_pairs=full
        )
        if config.prior != "none":
            # H = H0 + f; a DEQ iterates H <- H0 + g(H) from H0, as an SCF from its guess
            solver = PriorResidual(solver, config.prior, config.prior_basis)
            deq = (deq or DEQConfig()).model_copy(update={"init": config.prior})
        self.net = DEQHamiltonianSolver(solver, deq) if config.deq else solver

    def forward(self, batch) -> tuple[Blocks, DEQDiagnostics | None]:
        if self.config.deq:
            return self.net(batch)
        return self.net(batch, None, self.net.inject(batch)), None

    def describe(self) -> dict:
        """What a checkpoint must match to be loaded into this model."""
        return {
            "backbone": self.spec.name,
            "deq": self.config.deq,
            "overlap": self.config.reads_s,
            "prior": self.config.prior,
            "prior_basis": self.config.prior_basis,
            # only when full: checkpoints from before the option describe the same model
            **({"feedback": "full"} if self.feedback == "full" else {}),
            "params": self.params.model_dump(),
            "basis": self.layout.basis,
            "elements": list(self.layout.elements),
        }


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
