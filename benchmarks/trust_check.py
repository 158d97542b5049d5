"""How far to trust a trained model: the label-free commutator check on a training molecule,
molecules it never saw, and a distorted one, side by side.

    python benchmarks/trust_check.py runs/cpu-small/best.pt [--device cpu]

For a model trained on the bundled water/ethanol data it predicts

* the first molecule of the run's *training* part (read from the run's dataset),
* methanol (ASE's geometry): elements the model knows, a size and composition it never saw,
* the training molecule with its first two atoms pushed to 0.05 Å apart (distorted),

and prints, per molecule, ``max |F D S - S D F|`` (Hartree; ``F`` = the labels' recipe's Fock
matrix of the predicted density, see docs/training.md "How far to trust a prediction"), the
HOMO-LUMO gap, whether the DEQ converged and the out-of-domain warnings. A model worth using
gives a commutator on the training molecule far (10x and more) below the others'. Nothing is
trained here; a run of the main job (``deqh train --preset cpu-small``) is the intended input.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from ase.build import molecule

from deqh_core.ao.basis import symbol
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.inference.loaded import load_model, run_data_path
from deqh_core.inference.predict import HARTREE_EV, predict_frames, read_inputs


def _xyz(path: Path, z, positions, comment: str) -> Path:
    lines = [str(len(z)), comment]
    lines += [f"{symbol(int(a))} {x:.10f} {y:.10f} {w:.10f}" for a, (x, y, w) in zip(z, positions)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint, args.device)
    recipe, source = loaded.recipe()
    train_ids = loaded.checkpoint["split"]["train"]
    record = next(HamiltonianDataset(run_data_path(loaded), ids=train_ids[:1]).records())
    methanol = molecule("CH3OH")
    distorted = record.positions.copy()
    direction = distorted[1] - distorted[0]
    distorted[1] = distorted[0] + 0.05 * direction / np.linalg.norm(direction)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = [
            _xyz(folder / "training.xyz", record.atomic_numbers, record.positions, "training"),
            _xyz(folder / "methanol.xyz", methanol.numbers, methanol.positions, "methanol"),
            _xyz(folder / "distorted.xyz", record.atomic_numbers, distorted, "distorted"),
        ]
        frames = read_inputs(paths, loaded.layout, loaded.domain and loaded.domain.elements)
        predictions = predict_frames(loaded, frames, recipe=recipe, check=True)
    print(f"recipe: {recipe.xc}/{recipe.basis} (from {source})")
    print(f"{'molecule':<12} {'max|FDS-SDF|, Ha':>17} {'gap, eV':>8} {'DEQ':>12}  warnings")
    for p in predictions:
        deq = "-" if p.deq_converged is None else ("converged" if p.deq_converged else "UNCONV.")
        print(
            f"{p.comment:<12} {p.commutator.max_abs:>17.2e} {p.gap * HARTREE_EV:>8.2f} "
            f"{deq:>12}  {'; '.join(p.warnings) or '-'}"
        )
    base = predictions[0].commutator.max_abs
    for p in predictions[1:]:
        print(f"{p.comment}: commutator {p.commutator.max_abs / base:.1f}x the training molecule's")


if __name__ == "__main__":
    main()
