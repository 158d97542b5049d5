#!/usr/bin/env bash
# Install deqh as users do, not in editable mode: a built wheel and `pip install .`, each into a
# throwaway folder, then run deqh from outside the checkout and check that what runs is the
# installed copy and that it carries the bundled data and the shipped models. The build must print no warnings.
# Dependencies come from .venv (--no-deps, and the folder goes first on PYTHONPATH), so nothing
# is downloaded; run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# build from a clean copy of the tree (files git does not ignore): no stale build/ folder or
# egg-info of the checkout can leak into the wheel
mkdir "$TMP/src"
git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$TMP/src"
cd "$TMP/src"
"$PY" -m pip wheel --no-deps --no-build-isolation -w "$TMP/dist" . >"$TMP/build.log" 2>&1 || {
    cat "$TMP/build.log"; exit 1; }
if grep -i "warning" "$TMP/build.log"; then
    echo "smoke_install: building the wheel printed warnings (above)" >&2
    exit 1
fi
"$PY" -m pip install -q --no-deps --no-build-isolation --target "$TMP/wheel" "$TMP"/dist/deqh-*.whl
"$PY" -m pip install -q --no-deps --no-build-isolation --target "$TMP/source" .
cd "$TMP"

for site in wheel source; do
    echo "smoke_install: $site install"
    PYTHONPATH="$TMP/$site" "$PY" - "$TMP/$site" "$TMP/src" <<'PYTHON'
import sys
from pathlib import Path

import deqh_backbones
import deqh_core
import deqh_plugins
from deqh_core.data.dataset import BUNDLED

site = Path(sys.argv[1]).resolve()
for module in (deqh_core, deqh_backbones, deqh_plugins):
    assert site in Path(module.__file__).resolve().parents, (module.__file__, site)
assert BUNDLED.is_file() and site in BUNDLED.resolve().parents, BUNDLED
from deqh_core.inference.pretrained import SHIPPED

for model in SHIPPED.values():  # the shipped models travel in the package
    assert model.path.is_file() and site in model.path.resolve().parents, model.path
from pyscf import gto

from deqh_core.pyscf import init_guess

water = gto.M(atom="O 0 0 0.117; H 0 0.757 -0.469; H 0 -0.757 -0.469", basis="def2-svp")
assert init_guess(water).shape == (water.nao, water.nao)  # the shipped model, installed
# every module of the source tree is installed (a subpackage missing from pyproject's list is not)
source = Path(sys.argv[2])
for folder, package in (("deqh_core", "deqh_core"), ("backbones", "deqh_backbones")):
    wanted = {p.relative_to(source / folder) for p in (source / folder).rglob("*.py")}
    found = {p.relative_to(site / package) for p in (site / package).rglob("*.py")}
    assert wanted <= found, sorted(map(str, wanted - found))
PYTHON
    PYTHONPATH="$TMP/$site" "$TMP/$site/bin/deqh" backbones | grep -q qhnet
    PYTHONPATH="$TMP/$site" "$TMP/$site/bin/deqh" data check --scf-sample 0 | grep -q "exact"
    PYTHONPATH="$TMP/$site" "$TMP/$site/bin/deqh" models | grep -q qh9-small
done
# the SPHNet plugin as a third party installs it: a wheel of plugins/deqh-sphnet next to the
# installed deqh adds `sphnet` to `deqh backbones`; without it, it is not there
"$PY" -m pip wheel --no-deps --no-build-isolation -w "$TMP/plugin" "$TMP/src/plugins/deqh-sphnet" \
    >"$TMP/plugin.log" 2>&1 || { cat "$TMP/plugin.log"; exit 1; }
"$PY" -m pip install -q --no-deps --no-build-isolation --target "$TMP/sphnet" "$TMP"/plugin/deqh_sphnet-*.whl
PYTHONPATH="$TMP/sphnet:$TMP/wheel" "$TMP/wheel/bin/deqh" backbones | grep -q "deqh-sphnet 0.1.0"
if PYTHONPATH="$TMP/wheel" "$TMP/wheel/bin/deqh" backbones | grep -q sphnet; then
    echo "smoke_install: sphnet listed without its plugin installed" >&2
    exit 1
fi
echo "smoke_install: wheel and pip install . both run from outside the checkout; the sphnet plugin installs"
