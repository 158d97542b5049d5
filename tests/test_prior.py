"""The prior Hamiltonian H0: PySCF's matrices, H = H0 + f for every backbone and mode, and an
on-disk cache that is reused and never stale."""

import numpy as np
import pytest
import torch
from pyscf import dft, gto, scf
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout
from deqh_core.data.dataset import BUNDLED, HamiltonianDataset
from deqh_core.data.recipe import Recipe
from deqh_core.plugins.testing import check_backbone
from deqh_core.solvers import prior as prior_module
from deqh_core.solvers.deq import DEQConfig
from deqh_core.solvers.prior import InitialGuess, PriorCache, PriorResidual, prior_matrix
from deqh_core.solvers.protocol import Blocks, Capabilities
from deqh_core.training.config import ConfigError, ModelConfig, load_config
from deqh_core.training.metrics import hamiltonian_loss
from deqh_core.training.model import HamiltonianModel
from tests.molecules import METHANOL, QHNET_SMALL, WATER

LAYOUT = AOLayout("def2-svp", [1, 6, 8])
SMALL = QHNET_SMALL


def _pyscf_mol(z, pos):
    return gto.M(
        atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], basis="def2-svp", unit="Angstrom"
    )


def test_priors_are_pyscfs_core_hamiltonian_and_minao_fock():
    z, pos = METHANOL
    mol = _pyscf_mol(z, pos)
    hcore = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    np.testing.assert_allclose(prior_matrix(Recipe(), "1e", z, pos), hcore, atol=1e-12)
    mf = dft.RKS(mol, xc="b3lyp5")
    mf.grids.level = 3
    fock = mf.get_fock(dm=scf.hf.init_guess_by_minao(mol))
    h0 = prior_matrix(Recipe(), "minao", z, pos)
    np.testing.assert_allclose(h0, fock, atol=1e-10)
    assert np.array_equal(h0, h0.T)


class LabelMinusPrior(torch.nn.Module):
    """A 'backbone' that outputs exactly the label minus H0."""

    capabilities = Capabilities()
    layout = LAYOUT

    def inject(self, batch):
        return None

    def forward(self, batch, h, injection):
        return Blocks(batch.h_diag - batch.h0_diag, batch.h_off - batch.h0_off)


def _items(kind, molecules=(WATER, METHANOL)):
    from deqh_core.data.dataset import molecule_data
    from deqh_core.data.store import MoleculeRecord

    items = []
    for i, (z, pos) in enumerate(molecules):
        mol = _pyscf_mol(z, pos)
        label = dft.RKS(mol, xc="b3lyp5").run(conv_tol=1e-9).get_fock()
        item = molecule_data(MoleculeRecord(i, np.asarray(z), np.asarray(pos), label), LAYOUT)
        items.append(InitialGuess(Recipe(), kind)(item))
    return items


@pytest.mark.parametrize("kind", ["1e", "minao"])
def test_the_true_label_as_prediction_is_unchanged_by_the_prior(kind):
    batch = Batch.from_data_list(_items(kind))
    out = PriorResidual(LabelMinusPrior(), kind)(batch, None, None)
    torch.testing.assert_close(out.diag, batch.h_diag, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.off, batch.h_off, atol=1e-12, rtol=0)
    assert hamiltonian_loss(out, batch) < 1e-12


def test_lowdin_correction_is_the_orthogonalised_hamiltonians(monkeypatch):
    """H = H0 + S^1/2 f S^1/2: the f that gives the label is the label's correction in the
    Löwdin basis, S^-1/2 (H - H0) S^-1/2 (PySCF's overlap)."""
    import scipy.linalg

    from deqh_core.ao.blocks import assemble, split

    items = [InitialGuess(Recipe(), "minao", sqrt_overlap=True)(i) for i in _items("1e")]
    batch = Batch.from_data_list(items)
    corrections = []
    for item in items:
        z, pos = item.z.numpy(), item.pos.numpy()
        s = _pyscf_mol(z, pos).intor("int1e_ovlp")
        inv_half = np.linalg.inv(scipy.linalg.sqrtm(s).real)
        single = Batch.from_data_list([item])
        h = assemble(single.h_diag, single.h_off, single).view(len(s), len(s)).numpy()
        h0 = assemble(single.h0_diag, single.h0_off, single).view(len(s), len(s)).numpy()
        corrections.append(torch.as_tensor(inv_half @ (h - h0) @ inv_half).reshape(-1))
    f = Blocks(*split(torch.cat(corrections), batch))

    class Fixed(LabelMinusPrior):
        def forward(self, batch, h, injection):
            return f

    model = PriorResidual(Fixed(), "minao", "lowdin")
    out = model(batch, None, model.inject(batch))
    torch.testing.assert_close(out.diag, batch.h_diag, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.off, batch.h_off, atol=1e-9, rtol=0)
    with pytest.raises(Exception, match="s_half"):
        model.inject(Batch.from_data_list(_items("minao")))


@pytest.mark.parametrize("deq", [False, True])
def test_a_zero_output_head_predicts_exactly_the_prior(deq):
    torch.manual_seed(0)
    config = ModelConfig(backbone="qhnet", deq=deq, params=SMALL, prior="minao", prior_basis="ao")
    model = HamiltonianModel(config, LAYOUT, DEQConfig(f_max_iter=5)).double().eval()
    backbone = model.net.solver.solver.backbone if deq else model.net.solver.backbone
    with torch.no_grad():
        for head in (backbone.head_ii, backbone.head_ij):
            for p in head.parameters():
                p.zero_()
    batch = Batch.from_data_list(_items("minao"))
    with torch.no_grad():
        out, diagnostics = model(batch)
    assert torch.equal(out.diag, batch.h0_diag) and torch.equal(out.off, batch.h0_off)
    if deq:  # started at H0, one evaluation returns H0 exactly: converged at once
        assert diagnostics.all_converged and diagnostics.nstep.tolist() == [1, 1]


def test_a_prior_model_refuses_items_without_its_h0():
    model = HamiltonianModel(
        ModelConfig(backbone="qhnet", params=SMALL, prior="1e", prior_basis="ao"), LAYOUT
    )
    with pytest.raises(Exception, match="'1e' prior"):
        model(Batch.from_data_list(_items("minao")[:1]))


def test_deq_init_other_than_the_prior_is_a_config_error():
    with pytest.raises(ConfigError, match=r"deq\.init"):
        load_config(None, None, {"model": {"deq": True, "prior": "1e"}, "deq": {"init": "minao"}})


@pytest.mark.parametrize(("kind", "basis"), [("1e", "ao"), ("minao", "ao"), ("minao", "lowdin")])
def test_conformance_kit_with_every_prior(kind, basis):
    from deqh_backbones.qhnet.config import QHNetConfig

    results = check_backbone("qhnet", config=QHNetConfig(**SMALL), prior=kind, prior_basis=basis)
    suffix = "" if basis == "ao" else f" ({basis})"
    assert {r.mode for r in results} == {
        f"{m}, prior {kind}{suffix}"
        for m in ("predictor", "reads S", "reads H+S", "reads H+S, full feedback")
    }
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_cache_is_reused_and_keyed_by_recipe(tmp_path, monkeypatch, example_plugin):
    """Training computes each molecule's H0 once, before the first step: no PySCF call in any
    epoch, none in a second run; another recipe gets another cache."""
    from deqh_core.training.trainer import Trainer

    monkeypatch.setenv("DEQH_CACHE", str(tmp_path / "cache"))  # not another test's H0
    calls = []
    real = prior_module.prior_matrix

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(prior_module, "prior_matrix", counting)

    def trainer(out):
        config = load_config(
            None,
            None,
            {
                "model": {
                    "backbone": "tfn-mini",
                    "params": {"channels": 4, "layers": 1},
                    "prior": "1e",
                },
                "data": {"batch_size": 4, "sizes": "8/4/0", "prior_workers": 1},
                "optim": {"max_steps": 6, "warmup_steps": 1},
                "run": {"out": str(out), "val_every": 3, "progress": False},
            },
        )
        return Trainer(config)

    first = trainer(tmp_path / "a")
    first._fill_prior()
    assert len(calls) == 12  # train + val, once each, before the first step
    first.fit()  # 3 epochs of 2 batches, 2 validations
    assert len(calls) == 12
    trainer(tmp_path / "b").fit()
    assert len(calls) == 12
    cache = first.train_set.transform.cache
    record = next(HamiltonianDataset(ids=[first.split.train[0]]).records())
    assert cache.get(record.id, record.atomic_numbers, record.positions) is not None
    other = PriorCache(BUNDLED, Recipe(grid_level=4), "1e")
    assert other.path != cache.path
    assert other.get(record.id, record.atomic_numbers, record.positions) is None
    moved = record.positions + 0.01
    assert cache.get(record.id, record.atomic_numbers, moved) is None  # another geometry


def test_cache_never_writes_into_a_read_only_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DEQH_CACHE", str(tmp_path / "user"))
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.db").write_bytes(b"")
    assert PriorCache(shared / "data.db", Recipe(), "1e").path.parent == shared
    shared.chmod(0o555)  # read-only, as ../shared is (even for root)
    try:
        cache = PriorCache(shared / "data.db", Recipe(), "1e")
        assert cache.path.parent == tmp_path / "user" / "priors"
    finally:
        shared.chmod(0o755)


def test_cache_is_keyed_by_content_not_by_path(tmp_path, monkeypatch):
    """The same molecules opened from a moved folder, a copy or a read-only mount are served
    from the cache; other molecules or another recipe never are."""
    import shutil

    from deqh_core.data.store import HamiltonianDB

    monkeypatch.setenv("DEQH_CACHE", str(tmp_path / "user"))
    (tmp_path / "a").mkdir()
    shutil.copy(BUNDLED, tmp_path / "a" / "data.db")
    structures = list(HamiltonianDataset(tmp_path / "a" / "data.db").structures())[:3]
    cache = PriorCache(tmp_path / "a" / "data.db", Recipe(), "1e")
    assert cache.path.parent == tmp_path / "a"
    assert cache.fill(structures, progress=False) == 3

    (tmp_path / "a").rename(tmp_path / "b")  # a moved (or renamed, or remounted) folder
    moved = PriorCache(tmp_path / "b" / "data.db", Recipe(), "1e")
    assert moved.path == tmp_path / "b" / cache.path.name
    assert moved.missing(structures) == {} and moved.fill(structures, progress=False) == 0
    assert PriorCache(tmp_path / "b" / "data.db", Recipe(grid_level=4), "1e").missing(structures)

    # a read-only data folder: the cache goes to the user's cache folder and serves any copy
    for name in ("ro", "ro2"):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "b" / "data.db", tmp_path / name / "data.db")
        (tmp_path / name).chmod(0o555)
    try:
        first = PriorCache(tmp_path / "ro" / "data.db", Recipe(), "1e")
        assert first.path.parent == tmp_path / "user" / "priors"
        assert first.fill(structures, progress=False) == 3
        copy = PriorCache(tmp_path / "ro2" / "data.db", Recipe(), "1e")
        assert copy.path == first.path and copy.fill(structures, progress=False) == 0
    finally:
        for name in ("ro", "ro2"):
            (tmp_path / name).chmod(0o755)

    # other molecules under the same name: another cache
    (tmp_path / "c").mkdir()
    with HamiltonianDB(tmp_path / "b" / "data.db") as source:
        with HamiltonianDB(tmp_path / "c" / "data.db", "a") as subset:
            subset.write(source.get(structures[0][0]))
    other = PriorCache(tmp_path / "c" / "data.db", Recipe(), "1e")
    assert other.path.name != cache.path.name


def test_a_prior_checkpoint_refuses_data_and_overrides_of_another_recipe(example_plugin, tmp_path):
    """The model learned corrections to H0 of its labels' recipe: evaluating it on labels of
    another functional, or predicting with another functional, would change its input."""
    import csv
    import shutil
    import sqlite3

    from typer.testing import CliRunner

    from deqh_core.cli import app
    from deqh_core.training.trainer import Trainer

    config = load_config(
        None,
        None,
        {
            "model": {
                "backbone": "tfn-mini",
                "params": {"channels": 4, "layers": 1},
                "prior": "1e",
            },
            "data": {"batch_size": 4, "sizes": "8/4/4", "prior_workers": 1},
            "optim": {"max_steps": 1, "warmup_steps": 1},
            "run": {"out": str(tmp_path / "run"), "progress": False},
        },
    )
    Trainer(config).fit()
    other = tmp_path / "pbe.db"
    shutil.copy(BUNDLED, other)
    with sqlite3.connect(other) as con:
        (meta,) = con.execute("SELECT value FROM meta WHERE key = 'recipe'").fetchone()
        con.execute(
            "UPDATE meta SET value = ? WHERE key = 'recipe'", (meta.replace("b3lyp5", "pbe"),)
        )
    runner = CliRunner()
    checkpoint = str(tmp_path / "run" / "best.pt")
    result = runner.invoke(app, ["evaluate", checkpoint, "--data", str(other), "--no-progress"])
    assert result.exit_code == 1 and "'1e' prior" in result.output and "xc" in result.output
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0 0 0.117\nH 0 0.757 -0.467\nH 0 -0.757 -0.467\n")
    result = runner.invoke(app, ["predict", checkpoint, str(xyz), "--recipe", "xc=pbe"])
    assert result.exit_code == 1 and "'1e' prior" in result.output
    result = runner.invoke(app, ["evaluate", checkpoint, "--split", "val", "--no-progress"])
    assert result.exit_code == 0, result.output
    # the cost of H0 is reported next to the prediction's
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", checkpoint, str(xyz), "--out", str(out)])
    assert result.exit_code == 0 and "H0 (1e) built by PySCF" in result.output
    assert float(next(csv.DictReader((out / "summary.csv").open()))["prior_s"]) > 0
    result = runner.invoke(
        app,
        ["scf", checkpoint, str(xyz), "--guess", "minao", "--out", str(tmp_path / "scf")],
    )
    assert result.exit_code == 0 and "of which prior H0, s" in result.output, result.output


def test_labelling_stores_h0_that_training_reads_without_computing(tmp_path, monkeypatch):
    """The labelling SCF's first Fock matrix is PySCF's F[D_minao]: stored with the label, it
    is what PriorCache serves, and nothing is computed for those molecules."""
    from typer.testing import CliRunner

    from deqh_core.cli import app
    from deqh_core.data.store import HamiltonianDB

    out = tmp_path / "w.db"
    args = ["data", "generate", str(out), "--molecule", "H2O", "--molecule", "CH3OH"]
    result = CliRunner().invoke(app, [*args, "--xc", "pbe", "--basis", "sto-3g", "--no-progress"])
    assert result.exit_code == 0, result.output
    recipe = Recipe(xc="pbe", basis="sto-3g")
    with HamiltonianDB(out) as db:
        assert db.prior_ids("minao") == {0, 1} and db.prior_ids("1e") == set()
        for record in db:
            expected = prior_matrix(recipe, "minao", record.atomic_numbers, record.positions)
            np.testing.assert_allclose(db.prior(record.id, "minao"), expected, rtol=0, atol=1e-10)
    calls = []
    monkeypatch.setattr(prior_module, "_timed", lambda *a: calls.append(a))  # must not run
    cache = PriorCache(out, recipe, "minao")
    dataset = HamiltonianDataset(out)
    assert cache.fill(dataset.structures()) == 0 and not calls
    item = InitialGuess(recipe, "minao", cache=cache)(dataset[1])
    with HamiltonianDB(out) as db:
        stored = db.prior(1, "minao")
    again = InitialGuess(recipe, "minao")(dataset[1])  # computed by PySCF here
    torch.testing.assert_close(item.h0_off, again.h0_off, rtol=0, atol=1e-10)
    assert stored.shape[0] == int(dataset[1].n_ao)
    # another grid builds another H0: the stored one is not served for it
    assert PriorCache(out, recipe.model_copy(update={"grid_level": 5}), "minao").stored == set()


def test_data_prior_adds_h0_to_a_qh9_file_resumably(tmp_path):
    """QH9's own file (no recipe: QH9's) gets H0 in a table QH9's readers ignore."""
    from typer.testing import CliRunner

    from deqh_core.cli import app
    from deqh_core.data.store import HamiltonianDB
    from tests.qh9_files import Label, write_qh9_stable

    recipe = Recipe()  # QH9's: what a file without a recipe holds
    molecules = []
    for i, (z, pos) in enumerate((WATER, METHANOL)):
        n = recipe.mole(z, pos).nao
        zero = np.zeros((n, n))
        molecules.append((i, Label(z, pos, zero, np.eye(n), np.zeros(n), 0.0, True)))
    path = tmp_path / "QH9Stable.db"
    write_qh9_stable(path, molecules)
    args = ["data", "prior", str(path), "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "computed 2, 0 were already" in first.output, first.output
    with HamiltonianDB(path) as db:
        assert len(db) == 2 and db.prior_ids("minao") == {0, 1}
        for record in db:
            expected = prior_matrix(recipe, "minao", record.atomic_numbers, record.positions)
            np.testing.assert_allclose(db.prior(record.id, "minao"), expected, rtol=0, atol=1e-10)
    again = CliRunner().invoke(app, args)  # resumes: nothing left to compute
    assert again.exit_code == 0 and "computed 0, 2 were already" in again.output
    assert PriorCache(path, recipe, "minao").stored == {0, 1}
