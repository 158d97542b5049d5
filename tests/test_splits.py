"""Dataset splits: partitions, determinism, sizes, QH9 definitions, JSON round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from deqh_core.data.splits import (
    QH9_STABLE_SIZE,
    Split,
    group_split,
    groups_from_sources,
    qh9_stable_id_split,
    qh9_stable_ood_split,
    random_split,
    size_ood_split,
    within_group_split,
)
from deqh_core.util.errors import DataError


def parts(split: Split) -> list[list[int]]:
    return [split.train, split.val, split.test]


def assert_partition(split: Split, ids) -> None:
    """Sorted, disjoint and together exactly ``ids``."""
    for p in parts(split):
        assert p == sorted(p)
    union = split.train + split.val + split.test
    assert len(union) == len(set(union))
    assert sorted(union) == sorted(int(i) for i in ids)


IDS = np.random.RandomState(0).choice(10_000, size=1000, replace=False) + 1


@pytest.mark.parametrize("sizes", [(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), "0.8/0.1/0.1"])
def test_random_split_fractions(sizes):
    split = random_split(IDS, sizes, seed=3)
    assert_partition(split, IDS)
    fractions = [0.8, 0.1] if "0.8" in str(sizes) else [0.5, 0.25]
    assert len(split.train) == int(1000 * fractions[0])
    assert len(split.val) == int(1000 * fractions[1])


def test_random_split_counts_and_rest():
    split = random_split(IDS, "500/200/300", seed=1)
    assert [len(p) for p in parts(split)] == [500, 200, 300]
    assert_partition(split, IDS)
    partial = random_split(IDS, (100, 50, 25), seed=1)
    assert [len(p) for p in parts(partial)] == [100, 50, 25]
    union = set(partial.train) | set(partial.val) | set(partial.test)
    assert len(union) == 175 and union <= set(IDS.tolist())
    rest = random_split(IDS, (100, None, 50), seed=1)
    assert [len(p) for p in parts(rest)] == [100, 850, 50]
    under = random_split(IDS, (0.5, 0.1, 0.1), seed=1)
    assert [len(p) for p in parts(under)] == [500, 100, 100]


def test_random_split_deterministic_and_order_free():
    a = random_split(IDS, (0.8, 0.1, 0.1), seed=7)
    b = random_split(IDS[::-1].copy(), (0.8, 0.1, 0.1), seed=7)
    c = random_split(IDS, (0.8, 0.1, 0.1), seed=8)
    assert a == b
    assert a.train != c.train


def test_random_split_matches_qh9_stable_id_recipe():
    """QH9-stable-id: RandomState(43).permutation over file order, int() sizes, rest to test."""
    n = 1234
    ids = np.arange(n) + 1
    order = np.random.RandomState(43).permutation(n)
    n_train, n_val = int(n * 0.8), int(n * 0.1)
    split = random_split(ids, (0.8, 0.1, 0.1), seed=43)
    assert split.train == sorted(ids[order[:n_train]].tolist())
    assert split.val == sorted(ids[order[n_train : n_train + n_val]].tolist())
    assert split.test == sorted(ids[order[n_train + n_val :]].tolist())


def test_qh9_stable_id_counts():
    """The published QH9-stable-id sizes for its 130,831 molecules."""
    split = random_split(np.arange(130_831), (0.8, 0.1, 0.1), seed=43)
    assert [len(p) for p in parts(split)] == [104_664, 13_083, 13_084]


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((900, 100, 1), "ask for 1001 items but there are only 1000 ids"),
        ((2000, None, 0), "ask for 2000"),
        ((0.8, 0.2, 0.1), "sum to 1.1 > 1"),
        ((0.8, 100, 0.1), "mix counts"),
        ((0.8, 0.1), "train, val and test"),
        ((-1, 10, 10), ">= 0"),
        ((None, None, 10), "at most one"),
        ("a/b/c", "cannot read 'a'"),
    ],
)
def test_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        random_split(IDS, sizes, seed=0)


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicates"):
        random_split([1, 2, 2, 3], (0.5, 0.5, 0.0), seed=0)


def test_size_ood_thresholds():
    n_atoms = np.array([3, 20, 21, 22, 23, 29, 12, 22])
    ids = np.arange(len(n_atoms)) * 10
    split = size_ood_split(ids, n_atoms)
    assert split.train == [0, 10, 60]
    assert split.val == [20, 30, 70]
    assert split.test == [40, 50]
    custom = size_ood_split(ids, n_atoms, train_max=12, val_max=20)
    assert custom.train == [0, 60] and custom.val == [10] and custom.test == [20, 30, 40, 50, 70]
    with pytest.raises(ValueError, match="atom counts"):
        size_ood_split(ids, n_atoms[:-1])
    with pytest.raises(ValueError, match="train_max"):
        size_ood_split(ids, n_atoms, train_max=25, val_max=22)


def make_groups(n_groups=50, per_group=20, seed=0):
    """Shuffled ids with a molecule key each (like trajectory frames in file order)."""
    rng = np.random.RandomState(seed)
    ids = rng.permutation(n_groups * per_group) + 100
    groups = [f"mol{int(i - 100) // per_group}" for i in ids]
    return ids, groups


def test_group_split_keeps_groups_whole():
    ids, groups = make_groups()
    split = group_split(ids, groups, (0.8, 0.1, 0.1), seed=5)
    assert_partition(split, ids)
    key = dict(zip(ids.tolist(), groups))
    seen = [{key[i] for i in p} for p in parts(split)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert [len(s) for s in seen] == [40, 5, 5]  # sizes count groups
    assert [len(p) for p in parts(split)] == [800, 100, 100]
    assert split == group_split(ids, groups, (0.8, 0.1, 0.1), seed=5)
    assert split != group_split(ids, groups, (0.8, 0.1, 0.1), seed=6)
    counted = group_split(ids, groups, (10, 2, None), seed=5)
    assert [len(p) for p in parts(counted)] == [200, 40, 760]


def test_group_split_matches_qh9_dynamic_mol_recipe():
    """QH9-dynamic-mol: molecule indices 0..n-1 shuffled by random.seed(43), int() sizes."""
    n_mol, per_mol = 37, 4
    ids = np.arange(n_mol * per_mol)
    mol = ids // per_mol
    index_list = list(range(n_mol))
    random.Random(43).shuffle(index_list)
    n_train, n_val = int(n_mol * 0.8), int(n_mol * 0.1)
    expected = [
        set(index_list[:n_train]),
        set(index_list[n_train : n_train + n_val]),
        set(index_list[n_train + n_val :]),
    ]
    split = group_split(ids, mol.tolist(), (0.8, 0.1, 0.1), seed=43)
    for part, mols in zip(parts(split), expected):
        assert part == sorted(ids[np.isin(mol, list(mols))].tolist())


def test_within_group_split_divides_every_group():
    ids, groups = make_groups(n_groups=30, per_group=100)
    split = within_group_split(ids, groups, (0.8, 0.1, 0.1), seed=2)
    assert_partition(split, ids)
    key = dict(zip(ids.tolist(), groups))
    for g in set(groups):
        counts = [sum(key[i] == g for i in p) for p in parts(split)]
        assert counts == [80, 10, 10], g  # QH9-dynamic-geo: 80/10/10 of every trajectory
    again = within_group_split(ids[::-1].copy(), groups[::-1], (0.8, 0.1, 0.1), seed=2)
    assert split == again
    assert split != within_group_split(ids, groups, (0.8, 0.1, 0.1), seed=3)


def test_within_group_split_uneven_groups_and_counts():
    ids = np.arange(23)
    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 6
    split = within_group_split(ids, groups, (0.6, 0.2, 0.2), seed=0)
    assert_partition(split, ids)
    key = dict(zip(ids.tolist(), groups))
    per = {g: [sum(key[i] == g for i in p) for p in parts(split)] for g in "abc"}
    assert per == {"a": [6, 2, 2], "b": [4, 1, 2], "c": [3, 1, 2]}
    counted = within_group_split(ids, groups, (3, 1, 1), seed=0)
    assert sum(len(p) for p in parts(counted)) == 15
    with pytest.raises(ValueError, match="only a group of 6"):
        within_group_split(ids, groups, (5, 1, 1), seed=0)
    with pytest.raises(ValueError, match="group keys"):
        within_group_split(ids, groups[:-1], (0.6, 0.2, 0.2), seed=0)


def test_groups_from_sources():
    sources = ["water#0/copy3", "water#0", "ethanol#2/rattle/5", None, "", None]
    z = [[8, 1, 1], [8, 1, 1], [6, 6, 8, 1, 1, 1, 1, 1, 1], [6, 6, 8, 1, 1, 1, 1, 1, 1]]
    z += [[7, 1, 1, 1], [1, 8, 1]]
    assert groups_from_sources(sources, z)[:4] == ["water#0", "water#0", "ethanol#2", "C2H6O"]
    assert groups_from_sources(sources, z)[4:] == ["H3N", "H2O"]
    with pytest.raises(ValueError, match="sources"):
        groups_from_sources(sources, z[:-1])


def test_json_round_trip(tmp_path):
    split = random_split(IDS, (0.8, 0.1, 0.1), seed=11)
    path = tmp_path / "sub" / "split.json"
    split.to_json(path)
    assert Split.from_json(path) == split
    assert json.loads(path.read_text())["info"]["seed"] == 11
    split.to_json(path)  # overwrite in place
    assert Split.from_json(path) == split
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp files left


def test_json_errors(tmp_path):
    with pytest.raises(DataError, match="no such split file"):
        Split.from_json(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a valid split file"):
        Split.from_json(bad)
    bad.write_text(json.dumps({"train": [1, 2], "val": [2], "test": []}))
    with pytest.raises(DataError, match="more than one part"):
        Split.from_json(bad)
    bad.write_text(json.dumps({"train": [1], "val": []}))
    with pytest.raises(DataError, match="not a valid split file"):
        Split.from_json(bad)


def test_qh9_stable_id_split_is_membership_in_qh9s_parts():
    """QH9's definition, written out: RandomState(43).permutation(130831), int() sizes."""
    n = QH9_STABLE_SIZE
    order = np.random.RandomState(43).permutation(n)
    qh9 = [order[:104_664], order[104_664 : 104_664 + 13_083], order[104_664 + 13_083 :]]
    full = qh9_stable_id_split(np.arange(n))
    assert [len(p) for p in parts(full)] == [104_664, 13_083, 13_084]
    assert parts(full) == [sorted(p.tolist()) for p in qh9]
    assert parts(random_split(np.arange(n), (0.8, 0.1, 0.1), seed=43)) == parts(full)
    subset = np.random.RandomState(1).choice(n, size=500, replace=False)
    mine = qh9_stable_id_split(subset)
    assert_partition(mine, subset)
    for part, canonical in zip(parts(mine), qh9):
        assert set(part) <= set(canonical.tolist())
    with pytest.raises(DataError, match=r"id 130831 is not a QH9-stable id"):
        qh9_stable_id_split([5, n])
    with pytest.raises(DataError, match=r"id -1 is not a QH9-stable id"):
        qh9_stable_ood_split([-1], [3])


def test_qh9_stable_ood_split():
    split = qh9_stable_ood_split([4, 9, 2, 7], [20, 21, 23, 22])
    assert parts(split) == [[4], [7, 9], [2]] and split.info["kind"] == "qh9_stable_ood"
