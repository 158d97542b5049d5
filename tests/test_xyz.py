import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------------------------
# properties (hypothesis): whatever the text, frames or one line-numbered DataError

SYMBOLS = {"H": 1, "c": 6, "N": 7, "O": 8, "F": 9, "S": 16, "Cl": 17, "8": 8, "1": 1}
COORDINATES = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=64)
# a comment is one line: no character str.splitlines breaks at (Cc, Zl, Zp) and no surrogates
COMMENTS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
FRAMES = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.sampled_from(list(SYMBOLS)), COORDINATES, COORDINATES, COORDINATES),
            min_size=1,
            max_size=5,
        ),
        COMMENTS,
    ),
    min_size=1,
    max_size=3,
)
# lines an xyz file (or a broken one) is made of, to reach deep into the reader's branches
LINES = st.sampled_from(
    ["1", "2", "3", "0", "-1", "two", "2 atoms", "", "  ", "c", "O 0 0 0", "H 0.7 0.1 -2",
     "8 1 2 3", "h 0 0 1 extra", "Xx 0 0 0", "0 0 0 0", "-1 0 0 0", "200 0 0 0", "H 0 0",
     "H 0 x 0", "H nan 0 0", "H 1e400 0 0", "H 0 0 0\t9"]
)  # fmt: skip
TEXTS = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
                  st.lists(LINES, max_size=12).map("\n".join))  # fmt: skip


def _fresh(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / f"{uuid.uuid4().hex}.xyz"


@settings(max_examples=150, deadline=None)
@given(frames=FRAMES)
def test_written_frames_read_back_exactly(tmp_path_factory, frames):
    path = _fresh(tmp_path_factory)
    blocks = [
        f"{len(atoms)}\n{comment}\n" + "".join(f"{s} {x!r} {y!r} {z!r}\n" for s, x, y, z in atoms)
        for atoms, comment in frames
    ]
    path.write_text("".join(blocks))
    read = read_xyz(path)
    assert len(read) == len(frames)
    for frame, (atoms, comment) in zip(read, frames):
        assert frame.comment == comment.strip()
        assert frame.atomic_numbers.tolist() == [SYMBOLS[a[0]] for a in atoms]
        np.testing.assert_array_equal(frame.positions, [a[1:] for a in atoms])  # exact: repr


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_any_text_gives_frames_or_a_line_numbered_data_error(tmp_path_factory, text):
    path = _fresh(tmp_path_factory)
    path.write_text(text)
    try:
        frames = read_xyz(path)
    except DataError as err:
        where = re.match(rf"{re.escape(str(path))}:(\d+): \S", str(err))
        assert where, str(err)
        assert 1 <= int(where[1]) <= max(1, len(path.read_text().splitlines()))
    else:
        assert frames
        for frame in frames:
            assert frame.positions.shape == (len(frame.symbols), 3)
            assert np.isfinite(frame.positions).all() and (frame.atomic_numbers >= 1).all()
