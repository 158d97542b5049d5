"""The SPHNet plugin (plugins/deqh-sphnet), installed as a user installs it: registration,
the conformance kit in every mode, its sparsity gates and their schedule through training,
resume, EMA and checkpoints."""

import pytest
import torch

from deqh_core.plugins import check_backbone
from deqh_core.training.config import ConfigError, load_config
from deqh_core.training.trainer import Trainer, load_checkpoint
from tests.helpers import run_deqh

pytestmark = pytest.mark.usefixtures("one_thread")

# a small SPHNet: the kit and the training tests run in seconds
SMALL = {
    "channels": 8,
    "bottleneck": 4,
    "l_max": 2,
    "vector_layers": 1,
    "vector_heads": 2,
    "vector_rbf": 8,
    "num_rbf": 8,
    "radial_hidden": 8,
    "weight_hidden": 8,
}


def test_installed_sphnet_is_listed_with_its_package(sphnet_plugin):
    listed = run_deqh("backbones", site=sphnet_plugin)
    assert listed.returncode == 0, listed.stderr
    assert "sphnet" in listed.stdout and "deqh-sphnet 0.1.0" in listed.stdout


@pytest.mark.parametrize("prior", ["none", "minao"])
def test_sphnet_passes_the_conformance_kit_in_every_mode(sphnet_plugin, prior):
    from deqh_sphnet.config import SPHNetConfig

    results = check_backbone("sphnet", SPHNetConfig(**SMALL), prior=prior)
    modes = {r.mode.split(", prior")[0] for r in results}
    assert modes == {"predictor", "reads S", "reads H+S", "reads H+S, full feedback"}
    assert all(r.passed for r in results)


def test_pair_gate_keeps_a_share_per_molecule_and_symmetric_pairs_together(sphnet_plugin):
    from deqh_sphnet.gates import top_share

    # molecule 0: 10 pairs, two of them tied at the cut; molecule 1: 4 pairs
    score = torch.tensor([9.0, 8, 7, 7, 5, 4, 3, 2, 1, 0, 0.5, 0.25, -1, -2])
    group = torch.tensor([0] * 10 + [1] * 4)
    threshold = top_share(score, group, 0.3)
    assert threshold.tolist() == [7.0] * 10 + [0.25] * 4  # 3rd of 10, 2nd of 4 (ceil)
    shuffled = torch.randperm(14)  # the cut does not depend on the order of the rows
    assert torch.equal(top_share(score[shuffled], group[shuffled], 0.3), threshold[shuffled])
    kept = (score >= threshold).nonzero().squeeze(-1).tolist()
    assert kept == [0, 1, 2, 3, 10, 11]  # the tie at 7 kept together: 4 pairs, not 3


def test_pair_gate_factor_gives_no_reward_for_inflating_the_scores(sphnet_plugin):
    """The pair features' factor must not rise when every score is scaled or shifted: with the
    raw ``sigmoid(score - threshold)`` it did, and the gate inflated its scores until training
    diverged (docs/backbones.md)."""
    from deqh_sphnet.gates import PairGate

    torch.manual_seed(0)
    gate = PairGate(6, sparsity=0.7).double()
    invariants = torch.randn(30, 6, dtype=torch.float64)
    group = torch.tensor([0] * 12 + [1] * 18)
    kept, factor = gate(invariants, group)
    assert ((factor > 0.5 - 1e-9) & (factor < 1)).all()
    assert kept.tolist() == sorted(kept.tolist())
    with torch.no_grad():  # every score times 7, plus 3: same pairs, same factors
        gate.score.weight.mul_(7.0)
        gate.score.bias.mul_(7.0).add_(3.0)
    kept_scaled, factor_scaled = gate(invariants, group)
    assert torch.equal(kept_scaled, kept)
    torch.testing.assert_close(factor_scaled, factor)
    # so no gradient along the scorer's scale or shift: dF/dW . W == 0 and dF/db == 0
    factor_scaled.pow(2).sum().backward()
    w, b = gate.score.weight, gate.score.bias
    assert w.grad.norm() > 1e-3  # the gate still learns which pairs matter
    assert abs(float((w.grad * w).sum())) < 1e-9 and abs(float(b.grad)) < 1e-9


def test_path_gate_schedule_random_learned_frozen(sphnet_plugin):
    from deqh_sphnet.gates import FROZEN, LEARNED, RANDOM, PathGate

    gate = PathGate(20, sparsity=0.7)
    assert gate.n_kept == 6
    draws = set()
    for _ in range(5):
        gate.schedule(RANDOM)
        _, paths = gate()
        assert len(paths) == 6
        draws.add(paths)
    assert len(draws) > 1  # a new random selection every step
    with torch.no_grad():
        gate.weight.copy_(torch.arange(20.0))
    gate.schedule(LEARNED)
    scale, paths = gate()
    assert paths == tuple(range(14, 20))  # the largest learned weights
    assert torch.allclose(scale[14:], torch.arange(14.0, 20) / 16.5) and not scale[:14].any()
    gate.schedule(FROZEN)
    with torch.no_grad():
        gate.weight.copy_(torch.arange(20.0).flip(0))  # training goes on: the selection stays
    gate.schedule(RANDOM)
    frozen_scale, frozen_paths = gate()
    assert frozen_paths == paths and torch.equal(frozen_scale, scale.detach())
    restored = PathGate(20, sparsity=0.7).eval()
    restored.load_state_dict(gate.state_dict())  # the checkpoint carries the selection
    assert restored()[1] == paths


def test_sparse_paths_on_the_fused_kernel_equal_zeroed_weights_on_e3nn(sphnet_plugin):
    from e3nn import o3

    from deqh_core.plugins import ChannelTensorProduct

    irreps = o3.Irreps("4x0e+4x1o+4x2e")
    tp = ChannelTensorProduct(irreps, irreps, backend="fused")
    x1, x2 = irreps.randn(5, -1), irreps.randn(5, -1)
    weight = torch.randn(5, tp.mul, tp.n_paths)
    paths = (0, 3, 7, 8)
    weight[..., [p for p in range(tp.n_paths) if p not in paths]] = 0
    sparse = tp(x1, x2, weight.flatten(1), paths)
    tp_ref = ChannelTensorProduct(irreps, irreps, backend="e3nn")
    dense = tp_ref(x1, x2, weight.flatten(1))
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def _config(out, **optim):
    return load_config(
        None,
        None,
        {
            "model": {
                "backbone": "sphnet",
                "deq": True,
                # random paths for 2 of the 8 steps, learned for 2, frozen from step 4 on
                "params": SMALL | {"tp_random_until": 0.25, "tp_freeze_at": 0.5},
            },
            "data": {"batch_size": 3, "sizes": "24/6/0"},
            "deq": {"f_max_iter": 3},
            "optim": {"max_steps": 8, "warmup_steps": 2, "ema": True, **optim},
            "run": {"out": str(out), "dtype": "float64", "val_every": 4, "progress": False},
        },
    )


def _gates(model):
    from deqh_sphnet.gates import PathGate

    return [m for m in model.modules() if isinstance(m, PathGate)]


def test_schedule_through_training_resume_ema_and_checkpoint(sphnet_plugin, tmp_path):
    from deqh_sphnet.gates import FROZEN

    straight = Trainer(_config(tmp_path / "straight"))
    straight.fit()
    gates = _gates(straight.model)
    assert len(gates) == 4 and all(int(g.phase) == FROZEN for g in gates)
    # frozen at step 4: the learned top paths of then, whatever the weights did afterwards
    for gate in gates:
        assert 0 < int(gate.mask.sum()) < gate.mask.numel()
    # the EMA model (validation's) holds the same selection, not an average of masks
    for kept, current in zip(_gates(straight.ema.module), gates):
        assert torch.equal(kept.mask, current.mask) and int(kept.phase) == FROZEN
    # stopped at step 3 (before the freeze), resumed: the same run to the last bit
    first = Trainer(_config(tmp_path / "killed"))
    first.fit(stop_at_step=3)
    assert all(int(g.phase) < FROZEN for g in _gates(first.model))
    resumed = Trainer(_config(tmp_path / "killed"))
    resumed.fit(resume=True)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    # the checkpoint a user is handed carries the frozen selection
    state = load_checkpoint(tmp_path / "straight" / "last.pt")
    masks = [v for k, v in state["model"].items() if k.endswith("path_gate.mask")]
    assert [m.tolist() for m in masks] == [g.mask.tolist() for g in gates]
    # and a model rebuilt from it (what deqh predict / evaluate / scf use) computes with it
    from deqh_core.inference.loaded import load_model

    loaded = load_model(tmp_path / "straight" / "last.pt", ema=False)
    for kept, current in zip(_gates(loaded.model), gates):
        assert int(kept.phase) == FROZEN and kept()[1] == current.eval()()[1]


def test_cpu_presets_size_sphnet_and_refuse_a_backbone_without_a_size(
    sphnet_plugin, example_plugin
):
    from deqh_sphnet import CPU

    cfg = load_config("qh9-small", None, {"model": {"backbone": "sphnet"}})
    assert cfg.model.params == CPU
    assert load_config("qh9-small").model.params["channels"] == 16  # QHNet's stays
    with pytest.raises(ConfigError, match="no size for it"):
        load_config("cpu-small", None, {"model": {"backbone": "tfn-mini"}})


def test_ablate_two_backbones_into_one_table(sphnet_plugin, tmp_path):
    """deqh ablate --backbone qhnet --backbone sphnet: each backbone's variants in its own
    folder, sized by the preset for each, one table and chart for all."""
    from typer.testing import CliRunner

    from deqh_core.cli import app

    out = tmp_path / "study"
    settings = ["data.sizes=12/4/4", "data.batch_size=4", "deq.f_max_iter=2", "run.val_every=1"]
    result = CliRunner().invoke(
        app,
        ["ablate", "--backbone", "qhnet", "--backbone", "sphnet", "--preset", "cpu-small",
         "--out", str(out), "--no-progress", "--steps", "2", "--device", "cpu",
         "--variant", "qhnet", "--variant", "deqhnet",
         *[a for s in settings for a in ("--set", s)]],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = {p.parent.relative_to(out).as_posix() for p in out.glob("*/*/eval.json")}
    assert runs == {"qhnet/qhnet", "qhnet/deqhnet", "sphnet/qhnet", "sphnet/deqhnet"}
    config = load_checkpoint(out / "sphnet" / "deqhnet" / "best.pt")["config"]["model"]
    assert config["backbone"] == "sphnet" and config["params"]["vector_layers"] == 2
    table = (out / "ablation.md").read_text()
    for label in ("| DEQHNet |", "| QHNet |", "| DEQ sphnet |", "| sphnet |"):
        assert label in table
    assert (out / "ablation_time.png").read_bytes()[:4] == b"\x89PNG"


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])], ids=["cpu", "cuda"]
)
def test_every_layer_gives_the_same_under_every_ops_backend(sphnet_plugin, device):
    """One set of weights, every backend of the device (fused and e3nn; cueq on CUDA where
    installed): the same output of every spherical, diagonal and off-diagonal layer, with
    the path gates frozen (the fused kernels then skip the dropped paths)."""
    from torch_geometric.data import Batch

    from deqh_core.ao.basis import AOLayout
    from deqh_core.data.dataset import HamiltonianDataset
    from deqh_core.ops import cueq_available, use_backend
    from deqh_core.plugins import get_backbone
    from deqh_core.solvers.backbone import ReducedSolver
    from deqh_sphnet.config import SPHNetConfig
    from deqh_sphnet.layers import DiagLayer, OffDiagLayer, SphericalLayer

    layout = AOLayout("def2-svp", [1, 6, 8])
    torch.manual_seed(0)
    spec = get_backbone("sphnet")
    solver = ReducedSolver(spec, SPHNetConfig(**SMALL), layout, False, True).double().to(device)
    solver.backbone.training_step(1, 1)  # frozen paths
    dataset = HamiltonianDataset(layout=layout)
    batch = Batch.from_data_list([dataset[0], dataset[1]]).to(device)
    outputs: dict[str, list[torch.Tensor]] = {}
    layers = [
        m for m in solver.modules() if isinstance(m, SphericalLayer | DiagLayer | OffDiagLayer)
    ]
    assert len(layers) == 6
    backends = ["fused", "e3nn"] + (["cueq"] if device == "cuda" and cueq_available() else [])
    for backend in backends:
        captured: list[torch.Tensor] = []
        hooks = [
            m.register_forward_hook(lambda m, a, out, into=captured: into.append(out))
            for m in layers
        ]
        use_backend(solver, backend)
        with torch.no_grad():
            solver(batch, None, solver.inject(batch))
        for hook in hooks:
            hook.remove()
        outputs[backend] = captured
    for backend in backends[1:]:
        for reference, other in zip(outputs["fused"], outputs[backend], strict=True):
            torch.testing.assert_close(other, reference)
