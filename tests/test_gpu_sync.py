"""No host synchronisation inside a DEQ iteration on CUDA (imports no PySCF: the GPU check runs
it on a machine without it, benchmarks/gpu_tests.py). torch.cuda's sync debug mode "error"
raises on any operation that waits for the GPU."""

import pytest
import torch
from torch_geometric.data import Batch

from deqh_core.ao.basis import AOLayout
from deqh_core.ao.blocks import block_data
from deqh_core.solvers.deq import DEQConfig, DEQHamiltonianSolver
from deqh_core.solvers.fixed_point import per_molecule_fixed_point
from deqh_core.solvers.protocol import Blocks, Capabilities

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
LAYOUT = AOLayout("def2-svp", [1, 6, 8])
WATER = ([8, 1, 1], [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])
METHANOL = (
    [6, 8, 1, 1, 1, 1],
    [[-0.046, 0.663, 0.0], [-0.046, -0.758, 0.0], [-1.086, 0.975, 0.0],
     [0.438, 1.079, 0.887], [0.438, 1.079, -0.887], [0.868, -1.086, 0.0]],
)  # fmt: skip


def no_sync(fn):
    def guarded(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    return guarded


def _batch():
    items = []
    g = torch.Generator().manual_seed(0)
    for z, pos in (WATER, METHANOL):
        z = torch.tensor(z)
        item = block_data(LAYOUT, z, z=z, pos=torch.tensor(pos, dtype=torch.float64))
        n_pairs = item.pair_index.shape[1]
        a = LAYOUT.width
        item.s_diag = torch.rand(len(z), a, a, generator=g, dtype=torch.float64)
        item.s_off = torch.rand(n_pairs, a, a, generator=g, dtype=torch.float64)
        items.append(item)
    return Batch.from_data_list(items).to("cuda")


class Contraction(torch.nn.Module):
    capabilities = Capabilities(reads_h=True, reads_s=True)
    layout = LAYOUT

    def inject(self, batch):
        return None

    def forward(self, batch, h, injection):
        return Blocks(
            0.5 * torch.tanh(h.diag) + batch.s_diag, 0.5 * torch.tanh(h.off) + batch.s_off
        )


def test_the_solvers_bookkeeping_never_waits_for_the_gpu():
    target = torch.randn(3, 50, dtype=torch.float64, device="cuda")
    no_sync(per_molecule_fixed_point)(
        lambda x: 0.5 * x + target, torch.zeros_like(target), max_iter=12, tol=1e-9,
        check_every=100,
    )  # fmt: skip


@pytest.mark.parametrize("backbone", ["toy", "qhnet"])
def test_no_sync_inside_an_evaluation(backbone, monkeypatch):
    """Every evaluation (state unpacking, the backbone, packing) runs without a host sync."""
    from deqh_core.solvers import deq as deq_module

    monkeypatch.setattr(deq_module._Recorder, "__call__", no_sync(deq_module._Recorder.__call__))
    batch = _batch()
    if backbone == "toy":
        solver = Contraction()
    else:
        from deqh_backbones.qhnet.config import QHNetConfig
        from deqh_core.plugins.manager import get_backbone
        from deqh_core.solvers.backbone import ReducedSolver

        config = QHNetConfig(l_max=2, channels=8, bottleneck=4, layers=2, interaction_layers=1)
        solver = ReducedSolver(get_backbone("qhnet"), config, LAYOUT, True, True)
        solver = solver.to("cuda", torch.float64)
    deq = DEQHamiltonianSolver(solver, DEQConfig(f_max_iter=8, f_tol=1e-30)).eval()
    with torch.no_grad():
        _, diagnostics = deq(batch)
    assert diagnostics.nfe == 8 and not diagnostics.failed
