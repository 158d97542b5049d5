"""Benchmark geometries without data files: QM9-like random molecules, ethanol and uracil.

* :func:`qm9_like`: random saturated C/N/O/H molecules of up to 9 heavy atoms (QM9's range;
  about 18 atoms on average, as QM9 and QH9), built as trees with realistic bond lengths and
  angles and no clashes. Only sizes and shapes matter for timing; they are not QM9 molecules.
* :func:`ethanol`, :func:`uracil`: the MD17 molecules, with thermal-like noise per copy.

Pure NumPy (runs on a machine without PySCF or ASE). Positions in Å.
"""

from __future__ import annotations

import numpy as np

VALENCE = {6: 4, 7: 3, 8: 2}
BOND = {  # Å: (single, double)
    (6, 6): (1.53, 1.34),
    (6, 7): (1.47, 1.28),
    (6, 8): (1.43, 1.22),
    (7, 7): (1.45, 1.25),
    (7, 8): (1.41, 1.21),
    (8, 8): (1.48, 1.48),
    (1, 6): (1.09, 1.09),
    (1, 7): (1.01, 1.01),
    (1, 8): (0.96, 0.96),
}
TETRAHEDRAL = np.arccos(-1.0 / 3.0)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _direction(rng, existing: list[np.ndarray]) -> np.ndarray:
    """A bond direction roughly tetrahedral to the unit vectors ``existing`` (up to 3), with
    a few degrees of noise."""
    if not existing:
        v = rng.normal(size=3)
    elif len(existing) == 1:
        e = existing[0]
        u = _unit(np.cross(e, rng.normal(size=3)))
        v = np.cos(TETRAHEDRAL) * e + np.sin(TETRAHEDRAL) * u
    elif len(existing) == 2:
        bisector = _unit(-(existing[0] + existing[1]))
        normal = _unit(np.cross(existing[0], existing[1]))
        half = TETRAHEDRAL / 2
        v = np.cos(half) * bisector + rng.choice([-1.0, 1.0]) * np.sin(half) * normal
    else:
        v = -sum(existing)
    return _unit(_unit(v) + 0.08 * rng.normal(size=3))


def _grow(rng, n_heavy: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A tree of ``n_heavy`` C/N/O atoms (some bonds double), saturated with H; None when a
    placement clashes (the caller retries)."""
    z, pos, neighbours, used = [], [], [], []  # used: valence spent per atom

    def place(parent: int | None, element: int, order: int, clearance: float) -> bool:
        if parent is None:
            p = np.zeros(3)
        else:
            existing = [_unit(pos[k] - pos[parent]) for k in neighbours[parent]]
            length = BOND[(min(z[parent], element), max(z[parent], element))][order - 1]
            p = pos[parent] + length * _direction(rng, existing)
            others = [q for k, q in enumerate(pos) if k != parent]
            if others and np.linalg.norm(np.array(others) - p, axis=1).min() < clearance:
                return False
            neighbours[parent].append(len(z))
            used[parent] += order
        z.append(element)
        pos.append(p)
        neighbours.append([] if parent is None else [parent])
        used.append(order if parent is not None else 0)
        return True

    heavy = [6, 7, 8]
    p_heavy = [0.72, 0.14, 0.14]
    place(None, int(rng.choice(heavy, p=p_heavy)), 1, 0.0)
    while len(z) < n_heavy:
        element = int(rng.choice(heavy, p=p_heavy))
        # keep one valence free on every atom but the new leaf, so the tree can still grow
        free = [k for k in range(len(z)) if VALENCE[z[k]] - used[k] >= 2] or [
            k for k in range(len(z)) if VALENCE[z[k]] - used[k] >= 1
        ]
        if not free:
            return None
        parent = int(rng.choice(free))
        room = min(VALENCE[z[parent]] - used[parent], VALENCE[element])
        order = 2 if room >= 2 and rng.random() < 0.4 else 1
        if not place(parent, element, order, clearance=2.2):
            return None
    for k in range(n_heavy):
        for _ in range(VALENCE[z[k]] - used[k]):
            if not place(k, 1, 1, clearance=1.5):
                return None
    return np.array(z), np.array(pos)


def qm9_like(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` random molecules ``(atomic numbers, positions)`` with 7 to 9 heavy atoms."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        molecule = _grow(rng, int(rng.choice([9, 8, 7], p=[0.5, 0.3, 0.2])))
        if molecule is not None:
            out.append(molecule)
    return out


_ETHANOL = (
    [6, 6, 8, 1, 1, 1, 1, 1, 1],
    [
        [1.1682, -0.4004, 0.0],
        [0.0, 0.5595, 0.0],
        [-1.1901, -0.2277, 0.0],
        [-1.9466, 0.3815, 0.0],
        [0.0426, 1.2075, 0.8869],
        [0.0426, 1.2075, -0.8869],
        [2.1159, 0.1448, 0.0],
        [1.1286, -1.0372, 0.8859],
        [1.1286, -1.0372, -0.8859],
    ],
)  # ASE's g2 geometry (MP2)


def _uracil() -> tuple[list[int], np.ndarray]:
    """Uracil C4H4N2O2, planar: a hexagonal ring (1.39 Å) with C=O 1.22 Å, N-H 1.01 Å,
    C-H 1.08 Å pointing away from the ring's centre."""
    ring = [7, 6, 7, 6, 6, 6]  # N1 C2 N3 C4 C5 C6
    substituent = [(1, 1.01), (8, 1.22), (1, 1.01), (8, 1.22), (1, 1.08), (1, 1.08)]
    z, pos = [], []
    angles = np.deg2rad(90.0 + 60.0 * np.arange(6))
    radial = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    for k in range(6):
        z.append(ring[k])
        pos.append(1.39 * radial[k])
    for k, (element, length) in enumerate(substituent):
        z.append(element)
        pos.append((1.39 + length) * radial[k])
    return z, np.array(pos)


def _copies(z, pos, n: int, seed: int, sigma: float = 0.05):
    rng = np.random.default_rng(seed)
    pos = np.asarray(pos, dtype=float)
    return [(np.array(z), pos + rng.normal(scale=sigma, size=pos.shape)) for _ in range(n)]


def ethanol(n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return _copies(*_ETHANOL, n, seed)


def uracil(n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return _copies(*_uracil(), n, seed)


SETS = {"qm9-like": qm9_like, "ethanol": ethanol, "uracil": uracil}
