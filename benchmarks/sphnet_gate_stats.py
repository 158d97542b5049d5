"""SPHNet's sparsity gates during training, step by step: a `qh9-small` run (deqh's own trainer)
that prints, every ``--every`` steps, the training loss and, averaged over those steps, each pair
gate's score spread (standard deviation over a batch's pairs), its scorer's weight norm, its mean
factor and kept share, every spherical / diagonal / off-diagonal layer's largest output entry
and the gradient norm before clipping; and the validation H MAE. The diagnosis of the
divergence with both gates on (docs/backbones.md, "The pair-gate fix") was made this way.

    python benchmarks/sphnet_gate_stats.py --steps 1000 --seed 1 --sparsity 0.7

Needs the plugin: pip install ./plugins/deqh-sphnet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict

import torch

from deqh_core.training import trainer as training
from deqh_core.training.config import load_config, parse_override
from deqh_sphnet.gates import PairGate
from deqh_sphnet.layers import DiagLayer, OffDiagLayer, SphericalLayer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--every", type=int, default=50, help="steps per printed line")
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    args = parser.parse_args()
    settings = [
        "model.backbone=sphnet",
        f"model.params.sparsity={args.sparsity}",
        f"optim.max_steps={args.steps}",
        f"run.seed={args.seed}",
        f"run.val_every={max(args.steps // 4, 1)}",
        "run.progress=false",
        f"run.log_every={args.every}",
        f"run.out={tempfile.mkdtemp(prefix='sphnet-gates-')}",
        *args.set,
    ]
    config = load_config("qh9-small", None, *map(parse_override, settings))
    stats: dict[str, list[float]] = defaultdict(list)
    trainer = training.Trainer(config)

    for name, module in trainer.model.named_modules():
        short = name.removeprefix("net.backbone.")
        if isinstance(module, PairGate):

            def gate_hook(module, inputs, output, short=short):
                if module.training:
                    with torch.no_grad():
                        score = module.score(inputs[0]).squeeze(-1)
                    kept, factor = output
                    stats[f"{short} spread"].append(float(score.std()))
                    stats[f"{short} |w|"].append(float(module.score.weight.norm()))
                    stats[f"{short} factor"].append(float(factor.mean()))
                    stats[f"{short} kept"].append(kept.numel() / max(len(score), 1))

            module.register_forward_hook(gate_hook)
        elif isinstance(module, SphericalLayer | DiagLayer | OffDiagLayer):

            def layer_hook(module, inputs, output, short=short):
                if module.training:
                    stats[f"{short} max"].append(float(output.detach().abs().max()))

            module.register_forward_hook(layer_hook)

    clip = torch.nn.utils.clip_grad_norm_

    def clip_and_record(*a, **k):  # the trainer's clipping returns the norm before it
        norm = clip(*a, **k)
        stats["grad norm"].append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip_and_record
    write = training._MetricsLog.write

    def report(log, row):
        write(log, row)
        if row.get("split") == "val":
            print(f"step {row['step']}: validation H MAE {1e6 * row['mae_all']:.0f} µHa")
        elif row.get("split") == "train":
            line = "  ".join(f"{k} {statistics.fmean(v):.3g}" for k, v in sorted(stats.items()))
            print(f"step {row['step']}: loss {row['loss']:.4f}  {line}", flush=True)
            stats.clear()

    training._MetricsLog.write = report
    trainer.fit()


if __name__ == "__main__":
    main()
