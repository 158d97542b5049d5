"""Infrastructure every floor may use; nothing here knows about Hamiltonians.

* :mod:`~.errors` -- ``DeqhError`` and its kinds, the one pydantic error formatter
* :mod:`~.files` -- the one atomic file writer; settings files (YAML/TOML/JSON) read
* :mod:`~.cache` -- the cache folder
* :mod:`~.device` -- devices and moving batches to them
* :mod:`~.parallel` -- the process pool for PySCF work
* :mod:`~.progress` -- the one progress bar

Nothing is re-exported: spawned PySCF workers import single modules here without torch.
"""

__all__ = ["cache", "device", "errors", "files", "parallel", "progress"]
