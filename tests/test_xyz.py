import numpy as np
import pytest

from deqh_core.data.xyz import read_xyz
from deqh_core.util.errors import DataError

WATER = """3
frame one
O 0.0 0.0 0.0
H 0.0 0.757 0.587
h 0.0 -0.757 0.587 extra columns ignored
"""


def write(tmp_path, text, name="mol.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_multi_frame(tmp_path):
    text = WATER + "2\n\n8 1 2 3\nCl 4 5 6\n\n\n"
    frames = read_xyz(write(tmp_path, text))
    assert len(frames) == 2
    water, second = frames
    assert water.symbols == ["O", "H", "H"]
    assert water.comment == "frame one"
    assert water.atomic_numbers.dtype == np.int64
    np.testing.assert_array_equal(water.atomic_numbers, [8, 1, 1])
    assert water.positions.shape == (3, 3) and water.positions.dtype == np.float64
    np.testing.assert_allclose(water.positions[2], [0.0, -0.757, 0.587])
    assert second.symbols == ["O", "Cl"] and second.comment == ""
    np.testing.assert_allclose(second.positions, [[1, 2, 3], [4, 5, 6]])


BAD = {
    "bad count": ("three\nc\nO 0 0 0\n", 1),
    "count and junk": (WATER + "2 atoms\nc\nH 0 0 0\nH 0 0 1\n", 6),
    "too few lines": ("3\nc\nO 0 0 0\nH 0 0 1\n", 4),
    "too few second frame": (WATER + "2\nc\n", 7),
    "non-numeric": ("2\nc\nH 0 0 0\nH 0 x 1\n", 4),
    "too few columns": ("2\nc\nH 0 0 0\nH 0 1\n", 4),
    "unknown element": ("2\nc\nH 0 0 0\nXx 0 0 1\n", 4),
    "nan": ("2\nc\nH 0 0 nan\nH 0 0 1\n", 3),
    "inf": (WATER + "1\nc\nH inf 0 0\n", 8),
    "empty": ("\n\n", 1),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed(tmp_path, case):
    text, line = BAD[case]
    path = write(tmp_path, text, "broken.xyz")
    with pytest.raises(DataError, match=rf"broken\.xyz:{line}:"):
        read_xyz(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.xyz"):
        read_xyz(tmp_path / "nothere.xyz")
