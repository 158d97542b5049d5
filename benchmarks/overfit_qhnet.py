"""Overfit a backbone (QHNet by default) and its DEQ on a few real Hamiltonians to a target MAE.

    python benchmarks/overfit_qhnet.py [--variants predictor S DEQ] [--steps 3000] [--target 1e-4]
    python benchmarks/overfit_qhnet.py --atoms 9 --steps 5000      # ethanols
    python benchmarks/overfit_qhnet.py --backbone tfn-mini --params '{"channels": 32}'

A capacity and plumbing check, too slow for CI: the three variants (QHNet; QHNet reading S;
DEQHNet reading H and S, solved from the identity with at most ``--deq-iterations`` evaluations
in training and ``--eval-iterations`` in evaluation, stopping at ``--deq-tol``) are trained on
the first ``--molecules`` waters (``--atoms 3``) or ethanols (``--atoms 9``) of the bundled
B3LYP/def2-SVP dataset with the paper's loss
(eq. 45: RMSE + MAE over the valid block entries; for the DEQ plus ``--residual-weight`` x the
fixed-point penalty), AdamW and a one-cycle learning rate, in float64, and stop once the mean
absolute error of the eval-mode H (all valid entries, Hartree) is below ``--target``. Prints the
MAE every ``--every`` steps (for the DEQ also the training output's MAE, the residual and the
evaluations used) and a summary.

The DEQ's training solve is allowed to converge (20 evaluations, ``--deq-tol``): the loss fits
``f`` of the training iterate, so with fewer evaluations (6) the fit reaches ``f(H*)`` 3e-5
Hartree while the fixed point the eval-mode solve finds stays at 1.6e-4 (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch_geometric.data import Batch

from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.solvers.deq import DEQConfig
from deqh_core.solvers.protocol import Blocks
from deqh_core.training.config import ModelConfig
from deqh_core.training.metrics import MAEAccumulator, training_loss
from deqh_core.training.model import HamiltonianModel

# A reduced model: enough capacity to reach 1e-4 Hartree on three waters in a few thousand
# steps on a CPU.
DEFAULT_PARAMS = {
    "l_max": 3,
    "channels": 32,
    "bottleneck": 16,
    "layers": 3,
    "interaction_layers": 2,
    "num_rbf": 16,
    "filter_irreps": "32x0e+16x1o+8x2e",
    "filter_channels": 16,
}
VARIANTS = {"predictor": (False, False), "S": (False, True), "DEQ": (True, True)}


def evaluate(model: HamiltonianModel, batch, reads_h: bool) -> tuple[float, str]:
    """H MAE of the eval-mode prediction and, for a DEQ, the MAE of the training-mode output,
    the fixed-point residual and the iterations the eval-mode solve used.

    In training mode torchdeq returns ``f(H*)`` (one evaluation more, for the gradient), in eval
    mode the iterate ``H*`` itself; until the iteration has converged the two differ.
    """
    model.eval()
    with torch.no_grad():
        blocks, diagnostics = model(batch)
        accumulator = MAEAccumulator()
        accumulator.update(blocks, batch)
    mae = accumulator.result()["mae_all"]
    if not reads_h:
        return mae, ""
    model.train()
    trained = MAEAccumulator()
    trained.update(Blocks(*(b.detach() for b in model(batch)[0])), batch)
    residual = float(diagnostics.abs_residual.max())
    return mae, (
        f" (f(H*): {trained.result()['mae_all']:.3e}; |f(H)-H| {residual:.1e} Ha after "
        f"{diagnostics.nfe} evaluations, converged {diagnostics.all_converged})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--molecules", type=int, default=3)
    parser.add_argument("--atoms", type=int, default=3, help="3: waters, 9: ethanols")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--target", type=float, default=1e-4, help="H MAE to reach, Hartree")
    parser.add_argument("--deq-iterations", type=int, default=20, help="forward, training")
    parser.add_argument("--eval-iterations", type=int, default=50, help="forward, evaluation")
    parser.add_argument("--deq-solver", default="fixed_point_iter")
    parser.add_argument("--residual-weight", type=float, default=0.0, help="fixed-point penalty")
    parser.add_argument("--deq-tol", type=float, default=1e-4, help="|f(H)-H|_F, Hartree")
    parser.add_argument("--grad", default="phantom", choices=["phantom", "implicit"])
    parser.add_argument("--phantom-steps", type=int, default=1)
    parser.add_argument("--backbone", default="qhnet", help="any registered backbone")
    parser.add_argument(
        "--params", type=json.loads, default=None, help="JSON (qhnet: the reduced model)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundled = HamiltonianDataset()
    records = zip(bundled.ids, bundled.records())
    ids = [i for i, r in records if len(r.atomic_numbers) == args.atoms]
    dataset = HamiltonianDataset(ids=ids[: args.molecules])
    batch = Batch.from_data_list([dataset[i] for i in range(len(dataset))])
    deq = DEQConfig(
        f_solver=args.deq_solver,
        f_max_iter=args.deq_iterations,
        b_max_iter=args.deq_iterations,
        eval_f_max_iter=args.eval_iterations,
        f_tol=args.deq_tol,
        residual_weight=args.residual_weight,
        grad=args.grad,
        phantom_steps=args.phantom_steps,
    )
    if args.params is None:
        args.params = DEFAULT_PARAMS if args.backbone == "qhnet" else {}
    summary = {}
    for variant in args.variants:
        reads_h, reads_s = VARIANTS[variant]
        torch.manual_seed(0)
        config = ModelConfig(
            backbone=args.backbone, deq=reads_h, overlap=reads_s, params=args.params
        )
        model = HamiltonianModel(config, dataset.layout, deq).double()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05
        )
        start, mae, step = time.time(), float("inf"), 0
        print(f"== {variant}: {sum(p.numel() for p in model.parameters())} parameters")
        for step in range(1, args.steps + 1):
            model.train()
            loss = training_loss(*model(batch), batch, deq.residual_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % args.every == 0 or step == args.steps:
                mae, extra = evaluate(model, batch, reads_h)
                elapsed = time.time() - start
                print(
                    f"  step {step:5d}  loss {loss.item():.3e}  H MAE {mae:.3e} Ha{extra}"
                    f"  {elapsed:.0f}s"
                )
                if mae < args.target:
                    break
        summary[variant] = (mae, step, time.time() - start)
    print("\nvariant     H MAE (Ha)   steps   seconds   reached")
    for variant, (mae, step, seconds) in summary.items():
        print(f"{variant:10s} {mae:11.2e} {step:7d} {seconds:9.0f}   {mae < args.target}")


if __name__ == "__main__":
    main()
