"""Cost and batch dependence of the diagonal reduction in float64 against the float32 it was.

    python benchmarks/bench_reduction.py [--atoms 36] [--repeat 300]

The reduction of a float32 model computes in float64 (deqh_core/ao/reduction.py says why). This
times forward + backward of the module against the same contraction and normalisation done in
float32, in one run, and prints how much an atom's float32 features change when 20 methanols
join its batch under each. Time on an idle machine (check /proc/loadavg).
"""

from __future__ import annotations

import argparse
import time

import torch

from deqh_core.ao.basis import AOLayout
from deqh_core.ao.reduction import DiagonalReduction


def float32_reduction(module: DiagonalReduction, diag: torch.Tensor, rows: torch.Tensor):
    """What the module computed before: the same contraction and normalisation in float32."""
    per_element = torch.einsum("nab,eabk->nek", diag, module.table.to(diag.dtype))
    x = per_element.gather(1, rows[:, None, None].expand(-1, 1, per_element.shape[-1]))
    x = x.squeeze(1)
    mean_square = (x * x) @ module.group.to(x.dtype)
    return x * torch.rsqrt(mean_square + module.eps**2)[:, module.group_of]


def timed(fn, repeat: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=36)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    layout = AOLayout("def2-svp", [1, 6, 8])
    module = DiagonalReduction(layout).float()
    z = torch.tensor([8, 1, 1, 6, 6, 8, 1, 1, 1, 1, 1, 1] * (args.atoms // 12 + 1))[: args.atoms]
    rows = module.rows(z)
    gen = torch.Generator().manual_seed(0)
    diag = torch.randn(len(z), layout.width, layout.width, generator=gen)
    diag = ((diag + diag.transpose(1, 2)) * 10).requires_grad_()

    def step(fn):
        return lambda: fn().sum().backward()

    now = timed(step(lambda: module(diag, rows=rows)), args.repeat)
    before = timed(step(lambda: float32_reduction(module, diag, rows)), args.repeat)
    print(
        f"{args.atoms} atoms, forward + backward: float64 inside {now * 1e6:.0f} us, "
        f"float32 {before * 1e6:.0f} us (ratio {now / before:.2f})"
    )

    # an identity start: exactly zero l > 0 parts, where float32 rounding is amplified most
    eye = torch.eye(layout.width).expand(len(z), -1, -1).contiguous()
    crowd = torch.cat([eye[:3], eye.repeat(20, 1, 1)])
    crowd_rows = torch.cat([rows[:3], rows.repeat(20)])
    with torch.no_grad():
        for name, fn in (("float64 inside", module), ("float32", None)):
            run = (
                (lambda d, r: module(d, rows=r))
                if fn is not None
                else (lambda d, r: float32_reduction(module, d, r))
            )
            change = (run(crowd, crowd_rows)[:3] - run(eye[:3], rows[:3])).abs().max()
            print(
                f"{name}: features of 3 atoms change by {change.item():.1e} in a batch of "
                f"{len(crowd)} atoms"
            )


if __name__ == "__main__":
    main()
