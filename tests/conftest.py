import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# keep the on-site overlap tables of the tests out of the user's cache
os.environ.setdefault("DEQH_CACHE", tempfile.mkdtemp(prefix="deqh-cache-"))

torch.set_num_threads(min(2, torch.get_num_threads()))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def float64():
    """float64 as the default dtype for the test (equivariance to 1e-8 needs it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """Tiny models: a second thread only adds synchronisation (and, on a busy machine, waiting);
    modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _installed(tmp_path_factory, folder: str, module: str):
    """``pip install ./plugins/<folder>`` into a private target dir on sys.path, as a user
    installs a plugin; removed again after the session."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "plugins" / folder),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    from deqh_core.plugins import manager as plugins

    plugins.reload_plugins()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith(module)]:
        del sys.modules[name]
    plugins.reload_plugins()


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory):
    """``pip install ./plugins/deqh-example`` (the backbone ``tfn-mini``)."""
    yield from _installed(tmp_path_factory, "deqh-example", "deqh_example")


@pytest.fixture(scope="session")
def sphnet_plugin(tmp_path_factory):
    """``pip install ./plugins/deqh-sphnet`` (the backbone ``sphnet``)."""
    yield from _installed(tmp_path_factory, "deqh-sphnet", "deqh_sphnet")
