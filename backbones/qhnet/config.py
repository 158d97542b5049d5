"""Hyperparameters of the QHNet / DEQHNet backbone (defaults: paper Table 4 and the public code)."""

from __future__ import annotations

import math

from e3nn import o3
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deqh_core.plugins import OpsBackend


class QHNetConfig(BaseModel):
    """QHNet structure stream, interaction layers and heads, plus the DEQHNet filter (Fig. 2).

    The defaults are the paper's model (Table 4: spherical-harmonics order 4, 128 neurons,
    5 layers, cutoff 15 Å) with the public code's remaining settings (bottleneck 32, 32 radial
    basis functions, self/pair interaction on the last 2 layers). Unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    l_max: int = Field(
        4, ge=1, le=8, description="order of the edge spherical harmonics and of the hidden irreps"
    )
    channels: int = Field(
        128, ge=1, description="multiplicity of every irrep of the hidden node features"
    )
    bottleneck: int = Field(
        32, ge=1, description="multiplicity of every irrep fed to the block-expansion heads"
    )
    layers: int = Field(5, ge=1, description="structure (ConvNet) layers")
    interaction_layers: int = Field(
        2,
        ge=1,
        description="how many of the last layers feed a node-wise (self) and a pair-wise "
        "interaction layer; their outputs accumulate into the on-site and pair features",
    )
    cutoff: float = Field(
        15.0,
        gt=0,
        description="graph cutoff, Å: atoms closer than this exchange messages; radial "
        "features vanish smoothly at it",
    )
    num_rbf: int = Field(32, ge=2, description="exponential-Bernstein radial basis functions")
    rbf_alpha: float = Field(
        0.5, gt=0, description="initial decay rate of the exponential-Bernstein basis, 1/Å"
    )
    radial_hidden: int = Field(
        32, ge=1, description="hidden width of the ConvNet layers' radial and attention MLPs"
    )
    weight_hidden: int | None = Field(
        None,
        ge=1,
        description="hidden width of the MLPs that produce per-pair and per-element weights "
        "(the pair layers' radial MLPs, the heads' weight MLPs); None: channels",
    )
    # DEQHNet filter: TransBlocks over the diagonal-reduction features of H and/or S.
    filter_irreps: str | None = Field(
        None,
        description="irreps of the filter stream (TransBlock features), e3nn notation; used "
        "only when the backbone reads H and/or S. None: channels x 0e + channels/2 x 1o + "
        "channels/4 x 2e (128x0e+64x1o+32x2e by default, the public DEQHNet's attention "
        "irreps), rounded up to multiples of attention_heads",
    )
    filter_channels: int | None = Field(
        None,
        ge=1,
        description="multiplicity of every irrep of the fused (structure + filter) features and "
        "of the filter's self / pair interaction layers, which run once per DEQ iteration; "
        "None: bottleneck",
    )
    attention_heads: int = Field(
        4, ge=1, description="attention heads of each TransBlock (divide every multiplicity)"
    )
    filter_radial_hidden: int = Field(
        64, ge=1, description="hidden width of the TransBlocks' radial MLPs"
    )
    ops: OpsBackend = Field(
        "auto",
        exclude=True,  # not part of the model's identity: checkpoints load under any backend
        description="implementation of the equivariant ops (tensor products, linears, gates, "
        "norms), same weights for all: fused (deqh's, fastest on a CPU), e3nn (the reference), "
        "cueq (NVIDIA cuEquivariance), auto (fused on a CPU; on CUDA cueq when its CUDA "
        "kernels are installed, else e3nn); see docs/gpu.md",
    )

    @field_validator("filter_irreps")
    @classmethod
    def _valid_irreps(cls, value: str | None) -> str | None:
        if value is None:
            return None
        irreps = o3.Irreps(value)
        if not any(ir.l == 0 and ir.p == 1 for _, ir in irreps):
            raise ValueError("filter_irreps needs scalars (0e) for the attention weights")
        return str(irreps.simplify())

    @model_validator(mode="after")
    def _consistent(self) -> QHNetConfig:
        if self.interaction_layers > self.layers:
            raise ValueError(
                f"interaction_layers ({self.interaction_layers}) > layers ({self.layers})"
            )
        for mul, ir in self.filter_irreps_resolved:
            if mul % self.attention_heads:
                raise ValueError(
                    f"attention_heads ({self.attention_heads}) must divide every multiplicity "
                    f"of filter_irreps ({self.filter_irreps_resolved}); {mul}x{ir} does not"
                )
        return self

    @property
    def filter_irreps_resolved(self) -> o3.Irreps:
        """``filter_irreps``, or its default derived from ``channels``."""
        if self.filter_irreps is not None:
            return o3.Irreps(self.filter_irreps)
        heads = self.attention_heads
        muls = [heads * math.ceil(max(self.channels >> l, 1) / heads) for l in range(3)]
        return o3.Irreps(f"{muls[0]}x0e+{muls[1]}x1o+{muls[2]}x2e")

    @property
    def filter_width(self) -> int:
        """``filter_channels`` resolved."""
        return self.filter_channels or self.bottleneck

    @property
    def weight_width(self) -> int:
        """``weight_hidden`` resolved."""
        return self.weight_hidden or self.channels
