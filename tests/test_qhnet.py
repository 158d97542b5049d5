"""QHNet / DEQHNet backbone: the conformance kit in every mode, every ops backend and pre-seam
checkpoints, O(3) parity, reuse of the injection under a DEQ, and short overfits on real water
labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from deqh_backbones.qhnet import QHNet, QHNetConfig
from deqh_backbones.qhnet.attention import TransBlock
from deqh_backbones.qhnet.conv import ConvNetLayer
from deqh_core.ao.basis import AOLayout, mole
from deqh_core.data.dataset import HamiltonianDataset, molecule_data
from deqh_core.data.store import MoleculeRecord
from deqh_core.inference.loaded import load_model
from deqh_core.ops import active_backends, cueq_available, use_backend
from deqh_core.plugins.manager import get_backbone
from deqh_core.plugins.testing import KIT_MOLECULES, check_backbone
from deqh_core.solvers.backbone import BackboneError, BackboneSpec, ReducedSolver
from deqh_core.solvers.deq import DEQConfig, DEQHamiltonianSolver
from deqh_core.solvers.protocol import Blocks, Capabilities
from deqh_core.training.config import ConfigError, ModelConfig, load_config
from deqh_core.training.metrics import hamiltonian_loss
from deqh_core.training.model import HamiltonianModel
from deqh_core.training.trainer import Trainer
from tests.molecules import QHNET_SMALL

SMALL = QHNET_SMALL

LAYOUT = AOLayout("def2-svp", [1, 6, 8])
FIXED = DEQConfig(f_solver="fixed_point_iter", f_max_iter=3, b_max_iter=3, f_tol=1e-30)
pytestmark = pytest.mark.usefixtures("one_thread")


def _item(name: str, transform=None, mol_id: int = 0):
    """A kit molecule with PySCF's core Hamiltonian as label (float64)."""
    z, pos = KIT_MOLECULES[name]
    pos = np.asarray(pos, dtype=float) if transform is None else transform(np.asarray(pos))
    mol = mole(z, pos, LAYOUT.basis)
    hcore = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
    record = MoleculeRecord(mol_id, np.asarray(z), pos, hcore, mol.intor("int1e_ovlp"))
    return molecule_data(record, LAYOUT)


# ---------------------------------------------------------------------------------------------
# the backbone


def test_registered_with_capabilities():
    spec = get_backbone("qhnet")
    assert spec.capabilities.reads_h and spec.capabilities.reads_s
    assert spec.capabilities.reads_pairs  # DEQ feedback "full"
    assert spec.config is QHNetConfig


def test_config_defaults_are_the_papers_and_unknown_keys_fail():
    c = QHNetConfig()
    assert (c.l_max, c.channels, c.bottleneck, c.layers, c.cutoff) == (4, 128, 32, 5, 15.0)
    with pytest.raises(ValueError):
        QHNetConfig(chanels=4)
    with pytest.raises(ValueError, match="attention_heads"):
        QHNetConfig(filter_irreps="6x0e+3x1o", attention_heads=4)
    with pytest.raises(ValueError, match="interaction_layers"):
        QHNetConfig(layers=2, interaction_layers=3)


@pytest.mark.parametrize("cutoff", [15.0, 1.3])
def test_conformance_kit_every_mode(cutoff):
    """Predictor, reads S, reads H+S (DEQ-wrapped) and reads H+S with full feedback: rotation
    (e3nn Wigner-D, float64), translation, permutation, exact symmetry, alone vs in a batch.
    The 1.3 Å cutoff leaves methanol's far pairs outside the graph
    (their blocks must still be right)."""
    results = check_backbone("qhnet", config=QHNetConfig(**SMALL, cutoff=cutoff))
    modes = {r.mode for r in results}
    assert modes == {"predictor", "reads S", "reads H+S", "reads H+S, full feedback"}
    assert all(r.passed for r in results)


def test_any_basis_set_with_f_shells():
    """def2-TZVP has f shells on C and O: blocks up to l = 6, beyond the hidden l_max = 3."""
    config = QHNetConfig(**{**SMALL, "l_max": 3})
    assert all(r.passed for r in check_backbone("qhnet", config=config, basis="def2-tzvp"))
    with pytest.raises(BackboneError, match="use l_max >= 3"):
        QHNet(QHNetConfig(**SMALL), AOLayout("def2-tzvp", [1, 6]))


@pytest.mark.parametrize("feedback", ["diagonal", "full"])
def test_full_feedback_reads_the_off_diagonal_blocks(float64, feedback):
    """With full feedback the next iterate depends on the current H_ij; with the paper's
    diagonal feedback it does not."""
    torch.manual_seed(0)
    model = HamiltonianModel(
        ModelConfig(backbone="qhnet", deq=True, params=SMALL),
        LAYOUT,
        DEQConfig(feedback=feedback),
    ).eval()
    solver = model.net.solver
    assert solver.capabilities.reads_pairs == (feedback == "full")
    assert ("feedback" in model.describe()) == (feedback == "full")
    batch = Batch.from_data_list([_item("methanol")])
    injection = solver.inject(batch)
    h = Blocks(batch.h_diag, batch.h_off)  # any symmetric blocks: the label's
    moved = Blocks(h.diag, h.off * 1.5)
    with torch.no_grad():
        change = (solver(batch, moved, injection).off - solver(batch, h, injection).off).abs()
    assert (change.max() > 1e-6) == (feedback == "full")


def test_full_feedback_needs_a_backbone_that_reads_pairs():
    spec = get_backbone("qhnet")
    blind = BackboneSpec("blind", "test", QHNetConfig, spec.factory, Capabilities(True, True))
    with pytest.raises(BackboneError, match="cannot read pair features"):
        ReducedSolver(blind, QHNetConfig(**SMALL), LAYOUT, True, True, reads_pairs=True)
    with pytest.raises(ConfigError, match=r"deq\.feedback"):
        load_config(None, None, {"model": {"deq": False}, "deq": {"feedback": "full"}})


@pytest.mark.parametrize(
    ("reads_h", "reads_s", "pairs"),
    [(False, False, False), (False, True, False), (True, True, False), (True, True, True)],
)
def test_parity_inversion(float64, reads_h, reads_s, pairs):
    """O(3), not only SO(3): inverting the molecule multiplies AO slot k by (-1)^l(k)."""
    torch.manual_seed(0)
    spec = get_backbone("qhnet")
    solver = ReducedSolver(spec, QHNetConfig(**SMALL), LAYOUT, reads_h, reads_s, pairs).eval()

    def run(item):
        batch = Batch.from_data_list([item])
        with torch.no_grad():
            if reads_h:
                return DEQHamiltonianSolver(solver, FIXED).eval()(batch)[0]
            return solver(batch, None, solver.inject(batch))

    ref, inverted = run(_item("methanol")), run(_item("methanol", lambda p: -p))
    sign = torch.tensor((-1.0) ** LAYOUT.slot_l)
    parity = sign[:, None] * sign[None, :]
    torch.testing.assert_close(inverted.diag, ref.diag * parity, atol=1e-9, rtol=0)
    torch.testing.assert_close(inverted.off, ref.off * parity, atol=1e-9, rtol=0)


def test_water_alone_and_beside_a_distorted_molecule_get_the_same_fixed_point(float64):
    """The DEQ stops every molecule on its own: water's prediction does not depend on what
    else is in its batch, even next to a molecule its map cannot solve."""
    torch.manual_seed(0)
    solver = ReducedSolver(get_backbone("qhnet"), QHNetConfig(**SMALL), LAYOUT, True, True)
    deq = DEQHamiltonianSolver(solver, DEQConfig(f_max_iter=30, f_tol=1e-4)).eval()
    rng = np.random.default_rng(0)
    distorted = _item("methanol", lambda p: p + rng.normal(0, 0.3, p.shape), mol_id=1)
    water = _item("water")
    with torch.no_grad():
        alone, d_alone = deq(Batch.from_data_list([water]))
        both, d_both = deq(Batch.from_data_list([water, distorted]))
    n_atoms = water.num_nodes
    n_pairs = water.pair_index.shape[1]
    torch.testing.assert_close(both.diag[:n_atoms], alone.diag, atol=1e-8, rtol=0)
    torch.testing.assert_close(both.off[:n_pairs], alone.off, atol=1e-8, rtol=0)
    assert d_both.nstep[0] == d_alone.nstep[0] < d_both.nstep[1]  # they stop apart


def test_far_pairs_get_blocks_beyond_the_cutoff(float64):
    torch.manual_seed(0)
    model = QHNet(QHNetConfig(**SMALL, cutoff=1.3), LAYOUT)
    batch = Batch.from_data_list([_item("methanol")])
    injection = model.inject(batch)
    assert len(injection.edge_dst) < batch.pair_index.shape[1]  # not every pair is an edge
    out = model(batch, None, injection)
    assert out.off.shape[0] == batch.pair_index.shape[1]
    assert bool(torch.isfinite(out.off).all()) and out.off.abs().amax(dim=(1, 2)).min() > 0


def _counting(model: torch.nn.Module, cls: type) -> list[int]:
    calls = [0]
    for module in model.modules():
        if isinstance(module, cls):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("train", [False, True])
def test_structure_stream_runs_once_per_batch_under_deq(float64, train):
    torch.manual_seed(0)
    config = QHNetConfig(**SMALL)
    solver = ReducedSolver(get_backbone("qhnet"), config, LAYOUT, True, True)
    convs, blocks = _counting(solver, ConvNetLayer), _counting(solver, TransBlock)
    deq = DEQHamiltonianSolver(solver, FIXED).train(train)
    batch = Batch.from_data_list([_item("water"), _item("methanol", mol_id=1)])
    _, diagnostics = deq(batch)
    evaluations = diagnostics.nfe + (1 if train else 0)  # phantom gradient: one more f
    assert diagnostics.nfe == FIXED.f_max_iter
    assert convs[0] == config.layers  # inject: once per batch
    assert blocks[0] == config.layers * evaluations  # the filter: once per evaluation


def test_paper_size_parameter_counts():
    """The reference QHNet has 20.4M parameters and DEQHNet 26.3M (see the module docs for
    where ours differ)."""
    counts = {}
    for name, irreps in (("qhnet", None), ("deqhnet", o3.Irreps("32x0e+16x1o+8x2e"))):
        model = QHNet(QHNetConfig(), AOLayout("def2-svp", [1, 6, 7, 8, 9]), irreps)
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 19e6 < counts["qhnet"] < 24e6
    assert 0 < counts["deqhnet"] - counts["qhnet"] < 4e6


# ---------------------------------------------------------------------------------------------
# learning real labels


@pytest.mark.parametrize("variant", ["predictor", "reads S", "DEQ (reads H+S)"])
def test_overfits_real_water_hamiltonians(variant):
    """Three B3LYP/def2-SVP waters of the bundled dataset: the loss falls steadily."""
    torch.manual_seed(0)
    bundled = HamiltonianDataset()
    waters = [i for i, r in zip(bundled.ids, bundled.records()) if len(r.atomic_numbers) == 3]
    dataset = HamiltonianDataset(ids=waters[:3])
    batch = Batch.from_data_list([dataset[i] for i in range(3)])
    deq = variant.startswith("DEQ")
    config = ModelConfig(
        backbone="qhnet", deq=deq, overlap=variant != "predictor", params=dict(SMALL)
    )
    model = HamiltonianModel(config, dataset.layout, FIXED).double().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        loss = hamiltonian_loss(model(batch)[0], batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])


# ---------------------------------------------------------------------------------------------
# ops backends: one weight layout, checkpoints interchangeable

OPS = [
    pytest.param("fused"),
    pytest.param("e3nn"),
    pytest.param(
        "cueq", marks=pytest.mark.skipif(not cueq_available(), reason="needs cuEquivariance")
    ),
]


@pytest.mark.parametrize("ops", OPS)
def test_pre_seam_checkpoint_loads_under_every_backend(float64, ops):
    """``tests/data/qhnet_pre_ops.npz``: a DEQHNet backbone's state dict and outputs written
    by the code before the ops seam (main at bc842b1; how: tests/data/README.md). It loads
    unchanged (its derived constant buffers are ignored) and gives the same blocks with every
    backend."""
    saved = np.load(Path(__file__).parent / "data" / "qhnet_pre_ops.npz")
    config = QHNetConfig(**SMALL, ops=ops)
    model = QHNet(config, LAYOUT, o3.Irreps("32x0e+16x1o+8x2e")).eval()
    state = model.state_dict()  # only for the core's BlockExpansion table, left out of the file
    old = {k.removeprefix("state/"): torch.from_numpy(saved[k]) for k in saved if "/" in k}
    assert set(state) <= set(old) | {k for k in state if k.endswith("expansion.q")}
    model.load_state_dict({k: v for k, v in state.items() if k not in old} | old)
    batch = Batch.from_data_list([_item("water"), _item("methanol", mol_id=1)])
    with torch.no_grad():
        out = model(batch, torch.from_numpy(saved["node_features"]), model.inject(batch))
    # every op ran on the backend asked for (cueq has no gates or norms: those run fused)
    assert set(active_backends(model)) == ({ops} if ops != "cueq" else {"cueq", "fused"})
    torch.testing.assert_close(out.diag, torch.from_numpy(saved["diag"]), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.off, torch.from_numpy(saved["off"]), rtol=1e-9, atol=1e-10)


def test_checkpoint_trained_with_fused_evaluates_identically_with_e3nn(tmp_path):
    """``deqh train`` (DEQ, fused on this CPU) -> checkpoint -> ``load_model`` -> the same
    blocks and DEQ iterations computed with the e3nn reference."""
    config = load_config(
        None,
        None,
        {
            "model": {"backbone": "qhnet", "deq": True, "params": SMALL | {"ops": "fused"}},
            "data": {"batch_size": 2, "sizes": "4/2/0"},
            "deq": {"f_max_iter": 3, "b_max_iter": 3},
            "optim": {"max_steps": 2, "warmup_steps": 1},
            "run": {"out": str(tmp_path), "dtype": "float64", "val_every": 2, "progress": False},
        },
    )
    Trainer(config).fit()
    loaded = load_model(tmp_path / "last.pt")
    dataset = HamiltonianDataset(layout=loaded.layout, ids=loaded.checkpoint["split"]["val"])
    batch = Batch.from_data_list([dataset[i] for i in range(len(dataset))])
    results = {}
    for ops in ("fused", "e3nn"):
        use_backend(loaded.model, ops)
        with torch.no_grad():
            blocks, diagnostics = loaded.model(batch)
        assert set(active_backends(loaded.model)) == {ops}
        results[ops] = blocks, diagnostics.nfe
    (fused, nfe_fused), (e3nn, nfe_e3nn) = results["fused"], results["e3nn"]
    torch.testing.assert_close(fused.diag, e3nn.diag, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fused.off, e3nn.off, rtol=1e-9, atol=1e-10)
    assert nfe_fused == nfe_e3nn


def test_a_checkpoint_loads_with_any_ops_backend_and_resumes_with_another(tmp_path):
    """The backend a run trained with is not part of the model: ``load_model`` uses ``auto``
    (fused on a CPU) unless told, and ``--resume`` may switch it."""
    from deqh_core.training.config import resume_config

    values = {
        "model": {"backbone": "qhnet", "params": SMALL | {"ops": "e3nn"}},
        "data": {"batch_size": 2, "sizes": "4/2/0"},
        "optim": {"max_steps": 1, "warmup_steps": 1},
        "run": {"out": str(tmp_path), "dtype": "float64", "progress": False},
    }
    Trainer(load_config(None, None, values)).fit()
    batch = Batch.from_data_list([_item("water")])
    used = {}
    for ops in ("auto", None):
        loaded = load_model(tmp_path / "last.pt", ops=ops)
        with torch.no_grad():
            loaded.model(batch)
        used[ops] = set(active_backends(loaded.model))
    assert used == {"auto": {"fused"}, None: {"e3nn"}}
    config, changes = resume_config(
        load_config(None, None, values).model_dump(mode="json"),
        [{"model": {"params": {"ops": "fused"}}}],
        tmp_path,
    )
    assert config.model.params["ops"] == "fused"
    assert changes == [("model.params.ops", "e3nn", "fused")]
