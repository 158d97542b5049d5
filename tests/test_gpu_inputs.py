"""benchmarks/gpu_inputs.py: the precomputed inputs that let benchmarks and training run where
PySCF is not installed (benchmarks/gpu_check.sh) give what PySCF gives; the benchmark
geometries are sane."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_inputs  # noqa: E402
import molecules  # noqa: E402

from deqh_core.ao.basis import AOLayout  # noqa: E402
from deqh_core.ao.reduction import DiagonalReduction  # noqa: E402
from deqh_core.data.dataset import HamiltonianDataset  # noqa: E402


def test_qm9_like_geometries_have_qh9_sizes_and_no_clashes():
    sizes, closest = [], []
    for z, pos in molecules.qm9_like(64, seed=1):
        distance = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 9 * np.eye(len(z))
        sizes.append(len(z))
        closest.append(distance.min())
        assert set(z) <= {1, 6, 7, 8} and (z > 1).sum() <= 9
        assert int(z.sum()) % 2 == 0  # saturated: closed shell
    assert 16 < np.mean(sizes) < 21  # QH9: 18 atoms on average
    assert min(closest) > 0.9  # an O-H bond is 0.96 Å


def test_without_pyscf_the_precomputed_inputs_give_pyscfs_values(tmp_path):
    gpu_inputs.make(tmp_path, n_qm9=2)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pyscf"] = None  # as on a machine without PySCF
        sys.path.insert(0, {str(BENCHMARKS)!r})
        import numpy as np, torch, gpu_inputs
        from pathlib import Path
        assert gpu_inputs.use(Path({str(tmp_path)!r}))
        from deqh_core.ao.basis import AOLayout
        from deqh_core.data.dataset import HamiltonianDataset
        from deqh_core.ao.reduction import DiagonalReduction
        layout = AOLayout("def2-svp", [1, 6, 7, 8, 9])
        path = gpu_inputs.dataset("qm9-like", Path({str(tmp_path)!r}))
        data = HamiltonianDataset(path, layout=layout)
        item = data[0]
        features = DiagonalReduction(layout)(item.s_diag, item.z)
        np.savez({str(tmp_path / "out.npz")!r}, features=features.numpy(),
                 slot_ao=item.slot_ao.numpy(), width=layout.width, repr=repr(layout))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    layout = AOLayout("def2-svp", [1, 6, 7, 8, 9])
    item = HamiltonianDataset(gpu_inputs.dataset("qm9-like", tmp_path), layout=layout)[0]
    expected = DiagonalReduction(layout)(item.s_diag, item.z)
    with np.load(tmp_path / "out.npz") as got:
        assert int(got["width"]) == layout.width and str(got["repr"]) == repr(layout)
        np.testing.assert_array_equal(got["slot_ao"], item.slot_ao.numpy())
        torch.testing.assert_close(torch.from_numpy(got["features"]), expected)
