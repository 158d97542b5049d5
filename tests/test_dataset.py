"""The data path at scale: on-site overlaps without integrals, a bounded cache, metadata-only
splits and DataLoader workers that change nothing."""

from pathlib import Path

import numpy as np
import pytest
import torch

from deqh_core.ao.basis import mole
from deqh_core.ao.blocks import split
from deqh_core.data.dataset import HamiltonianDataset
from deqh_core.data.splits import groups_from_sources, size_ood_split
from deqh_core.training.config import DataConfig
from deqh_core.training.trainer import make_split

QH9_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "qh9_stable_small.db"
needs_qh9 = pytest.mark.skipif(not QH9_SMALL.is_file(), reason="../shared/data not beside repo")


@needs_qh9
def test_onsite_overlap_blocks_are_the_full_overlaps_diagonal_blocks():
    data = HamiltonianDataset(QH9_SMALL, overlap="onsite")
    for index in (0, 150, len(data) - 1):  # CH4, ..., a 10-atom molecule
        item = data[index]
        record = data.reader.get(data.ids[index])
        s = mole(record.atomic_numbers, record.positions, "def2-svp").intor("int1e_ovlp")
        s_diag, _ = split(torch.as_tensor(s).reshape(-1), item)
        assert torch.equal(item.s_diag, s_diag)  # same integrals, bit for bit
        assert not hasattr(item, "s_off") or item.s_off is None


def test_cache_holds_only_what_fits_its_budget():
    one = HamiltonianDataset(ids=[0])[0]
    size = sum(v.numel() * v.element_size() for v in one.values() if torch.is_tensor(v))
    data = HamiltonianDataset(ids=[0, 1, 2, 3], cache=True, cache_mb=2.5 * size / 2**20)
    items = [data[i] for i in range(4)]
    assert len(data._cache) == 2  # the first two fit, the others are rebuilt on access
    assert data[0] is items[0] and data[3] is not items[3]
    assert torch.equal(data[3].h_off, items[3].h_off)
    assert HamiltonianDataset(ids=[0], cache=True, cache_mb=0)._cache is None


def test_items_do_not_carry_their_gather_tables():
    item = HamiltonianDataset(ids=[0])[0]
    assert "_block_gather" not in item.__dict__


def test_metadata_splits_equal_splits_from_full_records():
    data = HamiltonianDataset()  # bundled waters and ethanols
    records = list(data.records())
    infos = data.reader.infos()
    assert [i.id for i in infos] == data.ids
    for info, record in zip(infos, records):
        assert np.array_equal(info.atomic_numbers, record.atomic_numbers)
        assert info.source == record.source
    by_size = make_split(data, DataConfig(split="size_ood"))
    expected = size_ood_split(data.ids, [len(r.atomic_numbers) for r in records])
    assert (by_size.train, by_size.val, by_size.test) == (
        expected.train,
        expected.val,
        expected.test,
    )
    groups = groups_from_sources([r.source for r in records], [r.atomic_numbers for r in records])
    grouped = make_split(data, DataConfig(split="group", sizes="0.5/0.5/0.0"))
    for part in (grouped.train, grouped.val):
        assert {groups[data.ids.index(i)] for i in part}.isdisjoint(
            {groups[data.ids.index(i)] for i in set(data.ids) - set(part)}
        )


@pytest.mark.slow
def test_training_with_loader_workers_matches_training_without(example_plugin, tmp_path):
    from deqh_core.training.config import load_config
    from deqh_core.training.trainer import Trainer

    def run(workers: int):
        config = load_config(
            None,
            None,
            {
                "model": {"backbone": "tfn-mini", "params": {"channels": 4, "layers": 1}},
                "data": {"batch_size": 3, "sizes": "12/3/0", "num_workers": workers},
                "optim": {"max_steps": 5, "warmup_steps": 1},
                "run": {
                    "out": str(tmp_path / f"w{workers}"),
                    "dtype": "float64",
                    "val_every": 5,
                    "progress": False,
                    "tensorboard": False,
                },
            },
        )
        trainer = Trainer(config)
        trainer.fit()
        return trainer.model.state_dict()

    plain, workers = run(0), run(2)
    for key, value in plain.items():
        assert torch.equal(value, workers[key]), key
