"""The plugin system, with the example plugin installed the way a user would install it."""

import ast
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deqh_core.cli import app
from deqh_core.plugins import hookimpl, hookspecs
from deqh_core.plugins import manager as plugins
from deqh_core.plugins.testing import check_backbone
from deqh_core.solvers.backbone import BackboneError, BackboneSpec
from deqh_core.solvers.protocol import Capabilities
from tests.helpers import run_deqh


def test_installed_plugin_is_listed_and_uninstalled_one_is_not(example_plugin):
    listed = run_deqh("backbones", site=example_plugin)
    assert listed.returncode == 0, listed.stderr
    assert "tfn-mini" in listed.stdout and "deqh-example-backbone 0.1.0" in listed.stdout
    without = run_deqh("backbones")
    assert without.returncode == 0 and "tfn-mini" not in without.stdout


def test_example_backbone_passes_the_conformance_kit(example_plugin):
    results = check_backbone("tfn-mini")
    modes = {r.mode for r in results}
    assert modes == {"predictor", "reads S", "reads H+S"}
    assert all(r.passed for r in results)
    cli = run_deqh("backbones", "check", "tfn-mini", site=example_plugin)
    assert cli.returncode == 0, cli.stderr
    assert "rotation equivariance" in cli.stdout and "FAIL" not in cli.stdout


def test_example_backbone_uses_the_ops_seam(example_plugin):
    """A third-party backbone built on deqh_core.ops: the same weights give the same blocks
    with the fused kernels and the e3nn reference, and e3nn passes the kit too."""
    from torch_geometric.data import Batch

    from deqh_core.ao.basis import AOLayout
    from deqh_core.data.dataset import HamiltonianDataset
    from deqh_core.ops import active_backends, use_backend
    from deqh_core.plugins.manager import get_backbone
    from deqh_core.solvers.backbone import ReducedSolver

    spec = get_backbone("tfn-mini")
    assert all(r.passed for r in check_backbone("tfn-mini", config=spec.config(ops="e3nn")))
    layout = AOLayout("def2-svp", [1, 6, 8])
    torch.manual_seed(0)
    solver = ReducedSolver(spec, spec.config(), layout, False, True).double()
    dataset = HamiltonianDataset(layout=layout)
    batch = Batch.from_data_list([dataset[0], dataset[1]])
    out = {}
    for backend in ("fused", "e3nn"):
        use_backend(solver, backend)
        out[backend] = solver(batch, None, solver.inject(batch))
        assert set(active_backends(solver)) == {backend}
    torch.testing.assert_close(out["fused"].diag, out["e3nn"].diag)
    torch.testing.assert_close(out["fused"].off, out["e3nn"].off)


def test_train_example_with_and_without_deq_through_the_cli(example_plugin, tmp_path):
    for deq in ("--no-deq", "--deq"):
        out = tmp_path / deq
        result = run_deqh(
            "train",
            "--backbone",
            "tfn-mini",
            deq,
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "deq.f_max_iter=2",
            "--set",
            "model.params={channels: 4, layers: 1}",
            site=example_plugin,
        )
        assert result.returncode == 0, result.stderr
        assert (out / "last.pt").exists() and (out / "config.yaml").exists()
        assert ("DEQ nfe" in result.stdout) and ("2.0" in result.stdout) == (deq == "--deq")
        summary = " ".join(result.stdout.split())
        deq_line = "DEQ solve of the 20 validation molecules at last (step 3): 0.0 % converged"
        assert (deq_line in summary) == (deq == "--deq"), summary


def test_unknown_backbone_lists_the_known_ones(example_plugin):
    result = CliRunner().invoke(app, ["train", "--backbone", "nope", "--steps", "1"])
    assert result.exit_code == 1
    assert "unknown backbone 'nope'" in result.output and "tfn-mini" in result.output


def _spec(name):
    from deqh_example.model import TFNMini, TFNMiniConfig

    return BackboneSpec(name, "test", TFNMiniConfig, TFNMini)


def test_two_plugins_claiming_one_name(example_plugin):
    class Clash:
        @hookimpl
        def deqh_backbones(self):
            return [_spec("tfn-mini")]

    plugins.register(Clash(), name="clash")
    try:
        with pytest.raises(
            plugins.PluginError,
            match=r"'tfn-mini' is claimed twice.*"
            r"deqh-example-backbone 0\.1\.0.*clash",
        ):
            plugins.backbones()
    finally:
        plugins.plugin_manager().unregister(name="clash")


def test_a_plugin_hook_that_raises_or_returns_junk_is_named_not_a_traceback():
    class Raises:
        @hookimpl
        def deqh_backbones(self):
            raise KeyError("oops")

    class Junk:
        @hookimpl
        def deqh_backbones(self):
            return ["not a spec"]

    for plugin, message in ((Raises(), "hook raised KeyError: 'oops'"), (Junk(), "got str")):
        plugins.register(plugin, name="broken")
        try:
            with pytest.raises(plugins.PluginError, match=r"plugin 'broken' .*") as err:
                plugins.backbones()
            assert message in str(err.value)
            result = CliRunner().invoke(app, ["backbones"])
            assert result.exit_code == 1 and "plugin 'broken'" in result.output
        finally:
            plugins.plugin_manager().unregister(name="broken")


def test_plugin_that_raises_on_import(tmp_path):
    dist = tmp_path / "brokenplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[deqh]\nbroken = broken_deqh_plugin\n")
    (tmp_path / "broken_deqh_plugin.py").write_text(
        textwrap.dedent("""
        raise RuntimeError("this plugin is broken")
    """)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(
            plugins.PluginError,
            match=r"plugin 'broken'.*brokenplug 1\.0.*"
            "RuntimeError: this plugin is broken",
        ):
            plugins.reload_plugins()
    finally:
        sys.path.remove(str(tmp_path))
        plugins.reload_plugins()


def test_get_backbone_error_is_specific():
    with pytest.raises(BackboneError, match="unknown backbone 'missing'; registered backbones:"):
        plugins.get_backbone("missing")


def test_the_kit_catches_a_backbone_that_breaks_the_symmetries(example_plugin):
    """The conformance kit must fail a backbone that reads raw coordinates and is asymmetric."""
    from deqh_core.solvers.protocol import Blocks
    from deqh_example.model import TFNMini, TFNMiniConfig

    class Broken(TFNMini):
        def forward(self, batch, node_features, injection):
            out = super().forward(batch, node_features, injection)
            x = batch.pos[:, :1, None]  # a lab-frame coordinate: not invariant
            diag = out.diag + x * torch.ones_like(out.diag).triu()  # and not symmetric
            return Blocks(diag, out.off)

    # predictor mode only: enough to catch it, and quick
    spec = BackboneSpec("broken", "test", TFNMiniConfig, Broken, Capabilities(False, False))
    results = check_backbone(spec, raise_on_failure=False)
    failed = {r.check for r in results if not r.passed}
    assert {
        "rotation equivariance (e3nn Wigner-D)",
        "translation invariance",
        "exact symmetry",
    } <= failed
    assert "same alone and inside a batch" not in failed
    with pytest.raises(AssertionError, match="backbone 'broken' failed"):
        check_backbone(spec)


# ----------------------------------------------------------------------------------------------
# the plugin author's one import


def _deqh_imports(path: Path) -> set[str]:
    """Every ``deqh_core`` module a file imports from (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deqh_core"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("deqh_core"))
    return found


def test_builtin_and_plugin_backbones_import_deqh_only_through_the_plugin_face():
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "backbones").rglob("*.py"), *(root / "plugins").glob("*.py")]
    files += (root / "plugins" / "deqh-example" / "deqh_example").rglob("*.py")
    files += (root / "plugins" / "deqh-sphnet" / "deqh_sphnet").rglob("*.py")
    assert len(files) > 10
    used = {str(p.relative_to(root)): _deqh_imports(p) for p in files}
    assert {m for modules in used.values() for m in modules} == {"deqh_core.plugins"}, used


def test_the_plugin_guide_covers_every_public_name_and_hook():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    face = importlib.import_module("deqh_core.plugins")
    hooks = [n for n, f in vars(hookspecs).items() if hasattr(f, "deqh_spec")]
    assert sorted(hooks) == ["deqh_backbones", "deqh_register_commands"]
    missing = [n for n in [*face.__all__, *hooks] if f"`{n}" not in guide]
    assert missing == []
    assert all(getattr(face, n, None) is not None for n in face.__all__)
