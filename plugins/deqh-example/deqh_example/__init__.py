"""deqh plugin registering the ``tfn-mini`` backbone."""

from deqh_core.plugins import BackboneSpec, Capabilities, hookimpl
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


@hookimpl
def deqh_register_commands(app) -> None:
    """``deqh tfn-mini-irreps``: a plugin can add commands to the deqh command line too."""

    @app.command("tfn-mini-irreps")
    def irreps(channels: int = 16) -> None:
        """Print the hidden irreps of a tfn-mini backbone with CHANNELS scalar channels."""
        import typer

        typer.echo(TFNMini.hidden_irreps(TFNMiniConfig(channels=channels)))
