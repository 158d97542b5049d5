"""deqh ablate / evaluate / predict through the CLI on tiny tfn-mini runs (float64, 2 steps).

One module-scoped ablation provides the checkpoints of every test here, so the whole file trains
four tiny models once."""

import json
import os

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader
from typer.testing import CliRunner

from deqh_core.ao.basis import mole
from deqh_core.ao.blocks import assemble, unflatten
from deqh_core.cli import app
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.recipe import Recipe
from deqh_core.data.store import HamiltonianDB, MoleculeRecord
from deqh_core.experiments.ablate import (
    PAPER_VARIANTS,
    VARIANTS,
    _remaining_minutes,
    base_config,
    mean_se,
    training_curve,
    variant_config,
)
from deqh_core.inference.loaded import load_model
from deqh_core.training.config import parse_override
from deqh_core.training.trainer import Trainer

SETTINGS = [
    "model.params={channels: 4, layers: 1}",
    "run.dtype=float64",
    "data.sizes=12/4/4",
    "data.batch_size=4",
    "deq.f_max_iter=2",
    "optim.warmup_steps=1",
    "run.val_every=1",
    "optim.ema=true",
]
ARGS = [a for s in SETTINGS for a in ("--set", s)]
runner = CliRunner()


def _ablate(out, *extra):
    return runner.invoke(
        app,
        ["ablate", "--backbone", "tfn-mini", "--out", str(out), "--no-progress", *ARGS, *extra],
    )


@pytest.fixture(scope="module")
def ablation(example_plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    overrides = [parse_override(s) for s in SETTINGS]
    overrides.append({"run": {"device": "cpu", "progress": False}})
    base = base_config(None, None, overrides, "tfn-mini", steps=2)
    # a variant killed after its first checkpoint: the ablation must resume, not restart, it
    Trainer(variant_config(base, "qhnet", out)).fit(stop_at_step=1)
    result = _ablate(out, "--steps", "2")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_ablate_trains_four_variants_resumes_and_reports(ablation):
    out, output = ablation
    assert "qhnet: resuming" in output and "deqhnet: training" in output
    splits = []
    assert not (out / "deqhnet-full").exists()  # not one of the paper's four: on request only
    for name in PAPER_VARIANTS:
        saved = json.loads((out / name / "eval.json").read_text())
        assert saved["step"] == 2 and saved["metrics"]["n_molecules"] == 4
        assert ("deq_nstep" in saved["metrics"]) == VARIANTS[name].deq
        assert (saved["model"]["deq"], saved["model"]["overlap"]) == (
            VARIANTS[name].deq,
            VARIANTS[name].overlap,
        )
        splits.append(torch.load(out / name / "best.pt", weights_only=False)["split"])
    assert all(s == splits[0] for s in splits)  # one split for all
    table = (out / "ablation.md").read_text()
    for label in ("DEQHNet", "DEQHNet w/o S", "QHNet", "QHNet w/ S"):
        assert f"| {label} |" in table
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # finished variants are skipped; other settings in the same directory are refused
    again = _ablate(out, "--steps", "2")
    assert again.exit_code == 0 and again.output.count("done, skipped") == 4
    other = _ablate(out, "--steps", "3")
    assert other.exit_code == 1 and "other settings" in other.output
    assert "optim.max_steps: 2 then, 3 now" in other.output


def test_ablate_adds_priors_to_the_same_table(ablation):
    """--prior trains the variants again on a prior H0, beside the runs without one."""
    out, _ = ablation
    result = _ablate(out, "--steps", "2", "--prior", "none", "--prior", "1e", "--variant", "qhnet")
    assert result.exit_code == 0, result.output
    assert "qhnet: done, skipped" in result.output and "qhnet+1e: training" in result.output
    saved = json.loads((out / "qhnet+1e" / "eval.json").read_text())
    assert saved["model"]["prior"] == "1e" and saved["step"] == 2
    rows = [line for line in (out / "ablation.md").read_text().splitlines() if "| QHNet |" in line]
    assert [row.split("|")[5].strip() for row in rows] == ["none", "1e"]
    bad = _ablate(out, "--steps", "2", "--prior", "dft")
    assert bad.exit_code == 1 and "unknown prior" in bad.output
    blind = _ablate(out, "--steps", "2", "--variant", "deqhnet-full")
    assert blind.exit_code == 1 and "cannot read pair features" in blind.output


def test_ablate_seeds_and_full_feedback_into_one_table(tmp_path):
    """--seeds 2 trains every run twice (seeds run.seed and run.seed + 1); the table gives mean
    ± standard error over the seeds, the step time and the error at equal wall-clock time, and
    DEQHNet with full feedback runs beside the predictor."""
    params = "{l_max: 2, channels: 8, bottleneck: 4, layers: 2, interaction_layers: 1, " + (
        "num_rbf: 8, radial_hidden: 8, filter_irreps: 8x0e+4x1o+4x2e, filter_channels: 4, "
        "attention_heads: 2, filter_radial_hidden: 8}"
    )
    args = ["--set", f"model.params={params}"] + [
        a for s in SETTINGS[1:] for a in ("--set", s)
    ]  # fmt: skip
    out = tmp_path / "study"
    result = runner.invoke(
        app,
        ["ablate", "--backbone", "qhnet", "--out", str(out), "--no-progress", "--steps", "3",
         "--seeds", "2", "--variant", "deqhnet-full", "--variant", "qhnet", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = {p.parent.name for p in out.glob("*/eval.json")}
    assert runs == {"qhnet", "qhnet.seed1", "deqhnet-full", "deqhnet-full.seed1"}
    seeds = {r: torch.load(out / r / "best.pt", weights_only=False)["config"]["run"]["seed"]
             for r in runs}  # fmt: skip
    assert seeds["qhnet.seed1"] == seeds["qhnet"] + 1
    full = json.loads((out / "deqhnet-full" / "eval.json").read_text())
    assert full["model"]["feedback"] == "full" and "deq_nstep" in full["metrics"]
    maes = [json.loads((out / r / "eval.json").read_text())["metrics"]["h_mae_all"]
            for r in ("qhnet", "qhnet.seed1")]  # fmt: skip
    assert maes[0] != maes[1]  # two seeds, two models
    mean, se = mean_se(maes)
    row = next(x for x in (out / "ablation.md").read_text().splitlines() if "| QHNet |" in x)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[5] == "2" and cells[7] == f"{mean * 1e6:.2f} ± {se * 1e6:.2f}"
    curve = training_curve(out / "qhnet")
    assert len(curve.minutes) == 3 and curve.step_seconds > 0  # val_every=1, 3 steps
    assert (out / "ablation_time.png").read_bytes()[:4] == b"\x89PNG"


def test_ablate_refuses_an_empty_split_and_charges_killed_time(example_plugin, tmp_path):
    result = _ablate(tmp_path / "a", "--steps", "1", "--set", "data.sizes=12/4/0")
    assert result.exit_code == 1 and "leaves the test split empty" in result.output
    assert not (tmp_path / "a").exists()
    run = tmp_path / "run"
    assert _remaining_minutes(run, 10.0) == 10.0  # first session: the clock starts
    budget = json.loads((run / "budget.json").read_text())
    (run / "last.pt").write_bytes(b"")
    os.utime(run / "last.pt", (budget["started"] + 120, budget["started"] + 120))
    # killed 2 minutes after its start with a checkpoint then: 8 minutes are left
    assert _remaining_minutes(run, 10.0) == pytest.approx(8.0)


def test_evaluate_reports_the_paper_metrics_and_matches_validation(ablation, tmp_path):
    out, _ = ablation
    ckpt = out / "deqhnet" / "best.pt"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(ckpt),
            "--data",
            str(BUNDLED),
            "--split",
            "val",
            "--json",
            str(tmp_path / "e.json"),
            "--csv",
            str(tmp_path / "m.csv"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ψ cosine similarity" in result.output and "DEQ final residual" in result.output
    saved = json.loads((tmp_path / "e.json").read_text())
    metrics = saved["metrics"]
    # the entry-weighted H MAE on the val split is what training validated best.pt with
    best = torch.load(ckpt, weights_only=False)["best"]
    assert metrics["h_mae_all_entries"] == pytest.approx(best["mae_all"], rel=1e-9)
    assert metrics["deq_nfe"] == pytest.approx(best["deq_nfe"])
    # and so are the DEQ's converged share and residuals (per molecule, batch-independent)
    assert metrics["deq_converged"] == best["deq_converged"] and best["deq_molecules"] == 4
    assert metrics["deq_residual_mean"] == pytest.approx(best["deq_residual_mean"], rel=1e-9)
    assert metrics["deq_residual_max"] == pytest.approx(best["deq_residual"], rel=1e-9)
    assert saved["weights"] == "ema" and saved["step"] == 2
    assert 0 <= metrics["psi_cos"] <= 1 and metrics["eps_occ_mae"] > 0
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and lines[0].startswith("mol_id,")


def _db(path, basis, atoms):
    """A QH9-schema file with one molecule and a (fake) label in ``basis``."""
    z = np.array([a[0] for a in atoms])
    pos = np.array([a[1] for a in atoms], dtype=float)
    n = mole(z, pos, basis).nao
    with HamiltonianDB(path, "a") as db:
        db.set_recipe(Recipe(basis=basis).as_meta())
        db.write(MoleculeRecord(0, z, pos, np.eye(n)))
    return path


WATER = [(8, (0.0, 0.0, 0.117)), (1, (0.0, 0.757, -0.467)), (1, (0.0, -0.757, -0.467))]
AMMONIA = [(7, (0.0, 0.0, 0.1)), (1, (0.0, 0.94, -0.27)), (1, (0.81, -0.47, -0.27))]


def test_evaluate_bad_inputs_fail_clearly_and_overwrite_nothing(ablation, tmp_path):
    out, _ = ablation
    ckpt = str(out / "qhnet" / "best.pt")
    previous = tmp_path / "keep.json"
    previous.write_text("{}")

    def evaluate(*args):
        result = runner.invoke(app, ["evaluate", *args, "--json", str(previous)])
        assert result.exit_code == 1, result.output
        assert previous.read_text() == "{}"
        return result.output

    assert "no such checkpoint" in evaluate(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    assert "not a readable checkpoint" in evaluate(str(corrupt))
    sto3g = _db(tmp_path / "sto3g.db", "sto-3g", WATER)
    message = evaluate(ckpt, "--data", str(sto3g))
    assert "sto-3g" in message and "def2-svp" in message
    nh3 = _db(tmp_path / "nh3.db", "def2-svp", [*AMMONIA, (1, (-0.81, -0.47, -0.27))])
    assert "element(s) N are not in the checkpoint's AO layout" in evaluate(
        ckpt, "--data", str(nh3)
    )
    state = torch.load(ckpt, weights_only=False)
    state["describe"]["backbone"] = state["config"]["model"]["backbone"] = "nope"
    torch.save(state, tmp_path / "other.pt")
    assert "unknown backbone 'nope'" in evaluate(str(tmp_path / "other.pt"))


def _xyz(path, frames):
    lines = []
    for z, pos in frames:
        lines += [str(len(z)), "from the bundled set"]
        lines += [f"{int(a)} {x!r} {y!r} {w!r}" for a, (x, y, w) in zip(z, pos.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_predict_saves_h_orbitals_and_matches_the_model(ablation, tmp_path):
    out, _ = ablation
    ckpt = out / "deqhnet" / "best.pt"
    records = list(HamiltonianDataset(ids=[0, 1, 100]).records())
    frames = [(r.atomic_numbers, r.positions) for r in records]
    water = _xyz(tmp_path / "water.xyz", frames[:2])
    ethanol = _xyz(tmp_path / "ethanol.xyz", frames[2:])
    pred_dir = tmp_path / "pred"
    args = ["predict", str(ckpt), str(water), str(ethanol), "--out", str(pred_dir)]
    # a 2-step model with 2 DEQ iterations converges nowhere: flagged, exit 1, results kept
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "3 of 3 molecule(s) did not converge" in result.output
    assert "UNCONVERGED" in result.output and "recipe: b3lyp5/def2-svp" in result.output
    assert (pred_dir / "summary.csv").read_text().count(",False,") == 3
    result = runner.invoke(app, [*args, "--keep-going"])
    assert result.exit_code == 0, result.output
    assert "C2H6O" in result.output and "H2O" in result.output
    names = sorted(p.name for p in pred_dir.iterdir())
    assert names == ["ethanol.npz", "summary.csv", "water_0000.npz", "water_0001.npz"]
    saved = np.load(pred_dir / "ethanol.npz")
    keys = ("hamiltonian", "overlap", "orbital_energies", "orbital_coefficients")
    h, s, eps, c = (saved[k] for k in keys)
    assert str(saved["basis"]) == "def2-svp" and int(saved["n_occ"]) == 13
    pyscf_s = mole(records[2].atomic_numbers, records[2].positions, "def2-svp").intor("int1e_ovlp")
    np.testing.assert_allclose(s, pyscf_s, atol=1e-12)
    np.testing.assert_allclose(h @ c, s @ c * eps, atol=1e-9)
    assert float(saved["homo"]) == eps[12] and "deq_residual" in saved
    # the same H as the model gives on the dataset's item of that molecule
    loaded = load_model(ckpt)
    batch = next(iter(DataLoader(HamiltonianDataset(ids=[100], layout=loaded.layout))))
    with torch.no_grad():
        blocks, _ = loaded.model(batch)
    expected = unflatten(assemble(*blocks, batch), batch.n_ao)[0].numpy()
    np.testing.assert_allclose(h, (expected + expected.T) / 2, atol=1e-10)
    assert len((pred_dir / "summary.csv").read_text().splitlines()) == 4

    chlorine = tmp_path / "hcl.xyz"
    chlorine.write_text("2\nHCl\nH 0 0 0\nCl 0 0 1.27\n")
    no = tmp_path / "no"
    bad = runner.invoke(app, ["predict", str(ckpt), str(water), str(chlorine), "--out", str(no)])
    assert bad.exit_code == 1
    assert "hcl.xyz: frame 0: element Cl (Z=17) is not in the checkpoint's AO layout" in bad.output
    assert not no.exists()
