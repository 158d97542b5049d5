"""Small real molecules for tests (Å), and a small QHNet to run on them."""

import numpy as np

from deqh_core.plugins.testing import KIT_MOLECULES

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

# a QHNet of a few thousand parameters (its hidden irreps reach l = 2, def2-SVP's d shells)
QHNET_SMALL = dict(
    l_max=2,
    channels=8,
    bottleneck=4,
    layers=2,
    interaction_layers=1,
    num_rbf=8,
    radial_hidden=8,
    filter_irreps="8x0e+4x1o+4x2e",
    filter_channels=4,
    attention_heads=2,
    filter_radial_hidden=8,
)
