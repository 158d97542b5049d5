"""Hyperparameters of SPHNet (defaults: the reference's QH9 configuration)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deqh_core.plugins import OpsBackend


class SPHNetConfig(BaseModel):
    """SPHNet's vectorial and spherical node interaction, pair construction and sparsity.

    Defaults follow the reference's QH9-stable configuration (``microsoft/SPHNet``): order 4,
    128 channels, 32 bottleneck channels, 2 spherical and 2 pair-construction layers, 16
    exponential-Bernstein radial functions, 70 % sparsity of both gates, random tensor-product
    paths for 2 of 61 epochs and learned ones for 1 more, then frozen. Unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    l_max: int = Field(4, ge=1, le=8, description="order of the harmonics and hidden irreps")
    channels: int = Field(128, ge=1, description="multiplicity of every hidden irrep")
    bottleneck: int = Field(32, ge=1, description="multiplicity of every irrep fed to the heads")
    vector_layers: int = Field(
        4, ge=1, description="vectorial node interaction (ViSNet) layers: scalars and vectors"
    )
    vector_cutoff: float = Field(5.0, gt=0, description="vectorial block's graph cutoff, Å")
    vector_heads: int = Field(8, ge=1, description="attention heads of the vectorial layers")
    vector_rbf: int = Field(32, ge=2, description="radial functions of the vectorial layers")
    pair_layers: int = Field(
        2,
        ge=1,
        description="spherical node interaction layers, each followed by a pair-construction "
        "(diagonal + off-diagonal) layer reading its output",
    )
    cutoff: float = Field(15.0, gt=0, description="spherical layers' graph cutoff, Å")
    pair_cutoff: float = Field(
        30.0,
        gt=0,
        description="cutoff of the pair-construction layers' radial basis, Å: a pair farther "
        "apart gets no tensor-product term (all pairs of a QH9 molecule are nearer)",
    )
    num_rbf: int = Field(16, ge=2, description="exponential-Bernstein radial functions")
    rbf_alpha: float = Field(0.5, gt=0, description="initial decay of the radial basis, 1/Å")
    radial_hidden: int = Field(32, ge=1, description="hidden width of the spherical layers' MLPs")
    weight_hidden: int | None = Field(
        None, ge=1, description="hidden width of the pair layers' and heads' MLPs; None: channels"
    )
    sparsity: float = Field(
        0.7,
        ge=0,
        lt=1,
        description="share of atom pairs each pair gate drops (per molecule) and of coupling "
        "paths each tensor-product gate drops",
    )
    pair_sparsity: float | None = Field(
        None, ge=0, lt=1, description="the pair gates' own sparsity (ablation); None: sparsity"
    )
    path_sparsity: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="the tensor-product gates' own sparsity (ablation); None: sparsity",
    )
    tp_random_until: float = Field(
        0.033,
        ge=0,
        le=1,
        description="share of the training steps during which the tensor-product gates pick "
        "random paths (a new draw every step)",
    )
    tp_freeze_at: float = Field(
        0.049,
        ge=0,
        le=1,
        description="share of the training steps after which the gates' learned selection is "
        "frozen (kept in the checkpoint; evaluation before it uses the learned top paths)",
    )
    ops: OpsBackend = Field(
        "auto",
        exclude=True,  # not part of the model's identity: checkpoints load under any backend
        description="implementation of the equivariant ops: fused, e3nn, cueq or auto",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SPHNetConfig:
        if self.channels % self.vector_heads:
            raise ValueError(
                f"vector_heads ({self.vector_heads}) must divide channels ({self.channels})"
            )
        if self.tp_freeze_at < self.tp_random_until:
            raise ValueError(
                f"tp_freeze_at ({self.tp_freeze_at}) < tp_random_until ({self.tp_random_until})"
            )
        return self

    @property
    def pair_share(self) -> float:
        """Share of pairs the pair gates drop."""
        return self.sparsity if self.pair_sparsity is None else self.pair_sparsity

    @property
    def path_share(self) -> float:
        """Share of coupling paths the tensor-product gates drop."""
        return self.sparsity if self.path_sparsity is None else self.path_sparsity

    @property
    def weight_width(self) -> int:
        """``weight_hidden`` resolved."""
        return self.weight_hidden or self.channels
