"""deqh plugin registering the ``tfn-mini`` backbone."""

from deqh_core.backbone import BackboneSpec
from deqh_core.hookspecs import hookimpl
from deqh_core.solver import Capabilities
from deqh_example.model import TFNMini, TFNMiniConfig


@hookimpl
def deqh_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="tfn-mini",
            description="A two-layer tensor-field network with tensor-product heads (example).",
            config=TFNMiniConfig,
            factory=TFNMini,
            capabilities=Capabilities(reads_h=True, reads_s=True),
        )
    ]
