"""What a model was trained on, and how far a new molecule lies from it.

A checkpoint records two things about its data (:mod:`deqh_core.training.checkpoint`):

* the dataset's **identity** (:func:`dataset_identity`): where it was, a checksum of its
  molecule ids and stored recipe, and the labels' recipe (with a note when the file records
  none and one was assumed), so a moved or swapped file is noticed and a prediction is never
  run with another functional than the labels';
* the **training domain** (:class:`TrainingDomain`): the elements, molecule sizes,
  compositions and interatomic distances of the training part, and the charge of its labels.

:meth:`TrainingDomain.check` lists, in words, how a new molecule lies outside that domain.
The model has no input for the charge: it always predicts the Hamiltonian of the labels' charge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deqh_core.ao.basis import formula, symbol
from deqh_core.data.recipe import Recipe, labels_recipe

MAX_FORMULAS = 10_000
"""Compositions recorded at most; beyond that none are (and none are checked)."""

MIN_DISTANCE = 0.5
"""Å: the closest two atoms of a molecule may be. No bond is shorter (H2's, the shortest, is
0.74 Å); a closer pair is a broken geometry (often bohr read as Å, or a duplicated atom), and
predictions for it are refused unless asked for anyway (``--keep-going``)."""

DISTANCE_MARGIN = 0.02
"""Relative margin before a distance counts as outside the training range (2 %)."""


def dataset_identity(
    path: str | Path, ids: Iterable[int], meta: dict | None, basis: str, structures: Iterable = ()
) -> dict:
    """What a checkpoint records about its dataset.

    Returns ``{"path", "checksum", "geometry", "molecules", "recipe", "recipe_note",
    "file_recipe"}``: the absolute path, ``sha256`` of the sorted molecule ids and the stored
    recipe (``meta``), :func:`geometry_checksum` of ``structures``, the number of molecules, the
    labels' recipe (:func:`deqh_core.data.recipe.labels_recipe`) as a dict, what was assumed
    (``None`` when the file records its recipe) and the stored meta.
    """
    recipe, note = labels_recipe(meta, basis)
    return {
        "path": str(Path(path).resolve()),
        "checksum": dataset_checksum(ids, meta),
        "geometry": geometry_checksum(structures),
        "molecules": len(list(ids)),
        "recipe": recipe.model_dump(),
        "recipe_note": note,
        "file_recipe": meta or None,
    }


def dataset_checksum(ids: Iterable[int], meta: dict | None) -> str:
    """``sha256`` of a dataset's sorted molecule ids and stored recipe (hex)."""
    payload = {"ids": sorted(int(i) for i in ids), "recipe": meta or None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def geometry_checksum(structures: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> str:
    """``sha256`` (hex) of every molecule's id, atomic numbers and positions, in the order given
    (ascending id): a file replaced by other molecules under the same ids is another dataset."""
    digest = hashlib.sha256()
    for mol_id, z, pos in structures:
        digest.update(np.int64(mol_id).tobytes())
        digest.update(np.ascontiguousarray(z, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(pos, dtype="<f8").tobytes())
    return digest.hexdigest()


def recorded_recipe(identity: dict | None) -> tuple[Recipe, str | None] | None:
    """The labels' recipe and note of a checkpoint's ``data`` entry (None if it has none)."""
    if not identity or not identity.get("recipe"):
        return None
    return Recipe(**identity["recipe"]), identity.get("recipe_note")


def nearest_neighbours(positions: np.ndarray) -> np.ndarray:
    """``[n_atoms]`` distance of each atom to its nearest neighbour (Å; inf for one atom)."""
    pos = np.asarray(positions, dtype=np.float64)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def _pair_minima(z: np.ndarray, positions: np.ndarray) -> dict[str, float]:
    """``{"C-H": shortest C-H distance, ...}`` over the element pairs of one molecule (Å)."""
    pos = np.asarray(positions, dtype=np.float64)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    lo, hi = np.minimum.outer(z, z), np.maximum.outer(z, z)
    i, j = np.triu_indices(len(z), 1)
    key = lo[i, j] * 1000 + hi[i, j]
    out: dict[str, float] = {}
    if not len(key):
        return out
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    minima = np.minimum.reduceat(d[i, j][order], starts)
    for k, m in zip(keys.tolist(), minima.tolist()):
        out[f"{symbol(k // 1000)}-{symbol(k % 1000)}"] = m
    return out


@dataclass
class TrainingDomain:
    """The molecules a model was trained on, summarised (distances in Å).

    Attributes:
        elements: atomic numbers present.
        atoms: ``[fewest, most]`` atoms in a molecule; ``sizes`` every atom count seen.
        formulas: every composition seen (Hill formulas), or None when there were more than
            :data:`MAX_FORMULAS`.
        nn_distance: ``[shortest, longest]`` nearest-neighbour distance of any atom.
        min_distance: the shortest interatomic distance (= ``nn_distance[0]``).
        pair_min_distance: per element pair (``"C-H"``) the shortest distance seen.
        charge: molecular charge of the labels (the model has no charge input).
        molecules: how many molecules this summarises.
    """

    elements: list[int]
    atoms: list[int]
    sizes: list[int]
    formulas: list[str] | None
    nn_distance: list[float]
    min_distance: float
    pair_min_distance: dict[str, float] = field(default_factory=dict)
    charge: int = 0
    molecules: int = 0

    @classmethod
    def from_structures(
        cls, structures: Iterable[tuple[np.ndarray, np.ndarray]], charge: int = 0
    ) -> TrainingDomain:
        """Summarise ``(atomic_numbers [n], positions [n, 3] Å)`` pairs (one pass; vectorised
        per molecule)."""
        elements: set[int] = set()
        sizes: set[int] = set()
        formulas: set[str] | None = set()
        nn_lo, nn_hi = np.inf, 0.0
        pairs: dict[str, float] = {}
        count = 0
        for z, pos in structures:
            z = np.asarray(z, dtype=np.int64)
            count += 1
            elements.update(z.tolist())
            sizes.add(len(z))
            if formulas is not None:
                formulas.add(formula(z))
                if len(formulas) > MAX_FORMULAS:
                    formulas = None
            if len(z) > 1:
                nn = nearest_neighbours(pos)
                nn_lo, nn_hi = min(nn_lo, float(nn.min())), max(nn_hi, float(nn.max()))
                for key, value in _pair_minima(z, pos).items():
                    pairs[key] = min(pairs.get(key, np.inf), value)
        if not count:
            raise ValueError("no molecules to summarise")
        return cls(
            elements=sorted(elements),
            atoms=[min(sizes), max(sizes)],
            sizes=sorted(sizes),
            formulas=sorted(formulas) if formulas is not None else None,
            nn_distance=[nn_lo, nn_hi] if nn_hi > 0 else [],
            min_distance=nn_lo if nn_hi > 0 else float("nan"),
            pair_min_distance=dict(sorted(pairs.items())),
            charge=int(charge),
            molecules=count,
        )

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainingDomain | None:
        return None if not values else cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self, atomic_numbers, positions, charge: int | None = None) -> list[str]:
        """How the molecule ``(atomic_numbers [n], positions [n, 3] Å)`` lies outside this
        domain, one sentence per finding (empty: inside). Unknown elements are listed too,
        though a model cannot predict them at all (callers refuse those first)."""
        z = np.asarray(atomic_numbers, dtype=np.int64)
        out = []
        unseen = sorted(set(z.tolist()) - set(self.elements))
        if unseen:
            out.append(f"element(s) {', '.join(symbol(e) for e in unseen)} never seen in training")
        n = len(z)
        if n not in self.sizes:
            where = "outside" if not self.atoms[0] <= n <= self.atoms[1] else "not among"
            out.append(f"{n} atoms: {where} the training sizes ({_ranges(self.sizes)})")
        name = formula(z)
        if self.formulas is not None and name not in self.formulas:
            seen = len(self.formulas)
            out.append(f"composition {name} not in the training part ({seen} compositions seen)")
        if n > 1 and self.nn_distance:
            nn = nearest_neighbours(positions)
            lo, hi = self.nn_distance
            if nn.min() < lo * (1 - DISTANCE_MARGIN):
                i = int(nn.argmin())
                out.append(
                    f"atom {i} ({symbol(z[i])}) is {nn[i]:.3f} Å from its nearest neighbour; "
                    f"the shortest such distance in training was {lo:.3f} Å"
                )
            if nn.max() > hi * (1 + DISTANCE_MARGIN):
                i = int(nn.argmax())
                out.append(
                    f"atom {i} ({symbol(z[i])}) is {nn[i]:.3f} Å from its nearest neighbour; "
                    f"the longest such distance in training was {hi:.3f} Å"
                )
            for key, value in _pair_minima(z, positions).items():
                seen = self.pair_min_distance.get(key)
                if seen is None:
                    if not unseen:
                        out.append(f"no {key} pair in the training part")
                elif value < seen * (1 - DISTANCE_MARGIN) and value >= lo * (1 - DISTANCE_MARGIN):
                    out.append(
                        f"{key} distance {value:.3f} Å; the shortest in training was {seen:.3f} Å"
                    )
        if charge is not None and int(charge) != self.charge:
            out.append(
                f"charge {int(charge):+d}: the model has no charge input and learned the "
                f"Hamiltonians of {'neutral' if not self.charge else f'charge {self.charge:+d}'} "
                "molecules; only the occupation changes"
            )
        return out


def _ranges(values: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    parts, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(str(v) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)
