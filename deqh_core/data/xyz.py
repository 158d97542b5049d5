"""Reader of (multi-frame) xyz files with line-numbered errors, and their writer.

Frames are concatenated blocks of ``N`` / comment / ``N`` atom lines ``symbol x y z [...]``
(positions in Å; extra columns, as in extended xyz, are ignored). The symbol may also be an
atomic number. Blank lines after the last frame are allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqh_core.ao.basis import atomic_number, symbol
from deqh_core.util.errors import BasisError, DataError
from deqh_core.util.files import atomic_open


@dataclass
class Frame:
    """One geometry: ``symbols`` and ``atomic_numbers`` ``[n]``, ``positions`` ``[n, 3]`` Å."""

    symbols: list[str]
    atomic_numbers: np.ndarray  # [n] int64
    positions: np.ndarray  # [n, 3] float64, Å
    comment: str


def read_xyz(path: str | Path) -> list[Frame]:
    """All frames of the xyz file ``path``, in file order."""

    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read xyz file ({err})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}:1: empty xyz file")

    def fail(i: int, msg: str) -> DataError:
        return DataError(f"{path}:{i + 1}: {msg}")

    frames: list[Frame] = []
    i = 0
    while i < len(lines):
        head = lines[i].split()
        n = _integer(head[0]) if len(head) == 1 else None
        if n is None or n <= 0:
            raise fail(i, f"expected a positive atom count, got {lines[i].strip()!r}")
        if i + 1 + n >= len(lines):
            raise fail(
                len(lines) - 1,
                f"file ends inside a frame: the atom count on line {i + 1} announces {n} atoms "
                f"but only {max(len(lines) - i - 2, 0)} atom lines follow",
            )
        comment = lines[i + 1].strip()
        zs, pos = [], []
        for j in range(i + 2, i + 2 + n):
            cols = lines[j].split()
            if len(cols) < 4:
                raise fail(j, f"expected 'symbol x y z', got {lines[j].strip()!r}")
            try:
                z = atomic_number(_integer(cols[0]) or cols[0])
            except BasisError:
                raise fail(j, f"unknown element {cols[0]!r}") from None
            try:
                xyz = [float(c) for c in cols[1:4]]
            except ValueError:
                raise fail(j, f"non-numeric coordinate in {lines[j].strip()!r}") from None
            if not all(math.isfinite(c) for c in xyz):
                raise fail(j, f"NaN or inf coordinate in {lines[j].strip()!r}")
            zs.append(z)
            pos.append(xyz)
        frames.append(
            Frame(
                symbols=[symbol(z) for z in zs],
                atomic_numbers=np.array(zs, dtype=np.int64),
                positions=np.array(pos, dtype=np.float64).reshape(n, 3),
                comment=comment,
            )
        )
        i += 2 + n
    return frames


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def write_xyz(path: str | Path, frames: list[Frame]) -> Path:
    """Write ``frames`` as one multi-frame xyz file (positions in Å, 8 decimals), atomically;
    :func:`read_xyz` reads it back exactly to those decimals."""
    lines = []
    for frame in frames:
        comment = frame.comment.replace("\n", " ")
        lines += [str(len(frame.symbols)), comment]
        lines += [
            f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(frame.symbols, frame.positions)
        ]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return Path(path)
