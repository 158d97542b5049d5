import os
import tempfile

import pytest
import torch

# keep the on-site overlap tables of the tests out of the user's cache
os.environ.setdefault("DEQH_CACHE", tempfile.mkdtemp(prefix="deqh-cache-"))

torch.set_num_threads(min(2, torch.get_num_threads()))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
