"""Small real molecules for tests (Å)."""

import numpy as np

from deqh_core.testing import KIT_MOLECULES

WATER, METHANOL = (
    (np.array(z), np.array(pos)) for z, pos in (KIT_MOLECULES["water"], KIT_MOLECULES["methanol"])
)
AMMONIA = (
    np.array([7, 1, 1, 1]),
    np.array(
        [[0.0, 0.0, 0.116], [0.0, 0.939, -0.272], [0.813, -0.470, -0.272], [-0.813, -0.470, -0.272]]
    ),
)
# sulfur and chlorine: for bases and elements beyond def2-SVP/HCNOF
CH3SCL = (
    np.array([6, 16, 17, 1, 1, 1]),
    np.array(
        [
            [0.0, 0.0, 0.0],
            [1.82, 0.0, 0.0],
            [2.40, 1.95, 0.0],
            [-0.36, -1.03, 0.0],
            [-0.36, 0.51, 0.89],
            [-0.36, 0.51, -0.89],
        ]
    ),
)
