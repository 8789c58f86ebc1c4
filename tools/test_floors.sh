#!/usr/bin/env bash
# Prove the declared version floors: install every dependency of symnoise at the lowest version pyproject.toml
# allows, in a venv of its own, and run the tests marked `floor` (each integration: the recipe, the Trainer and
# TRL hooks, PEFT, data, the judge and the harness).
#
#   tools/test_floors.sh [extra pytest arguments]
#
# Environment: PYTHON (the interpreter that makes the venv, default python3), FLOOR_VENV (default .venv-floor),
# TORCH_VERSION (default 2.13.0, the same CPU build the Makefile installs; torch is the one dependency not
# installed at its floor: see the README's "Tests" section).
#
# Idempotent: the venv is rebuilt from scratch only when pyproject.toml's floors change (so no package of an
# earlier install lingers in it), otherwise reused as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${FLOOR_VENV:-.venv-floor}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
CONSTRAINTS="$VENV/floor-constraints.txt"
STAMP="$VENV/.floors-installed"

wanted=$(mktemp)
trap 'rm -f "$wanted"' EXIT
# eval: the judge and harness packages the subset imports; dev: pytest and hypothesis (the other dev tools are
# pinned too but not installed: a constraint only applies to what is installed).
"$PYTHON" tools/floor_constraints.py --extra eval --extra dev --skip torch -o "$wanted"
echo "torch==$TORCH_VERSION" >>"$wanted"

if [ -f "$STAMP" ] && cmp -s "$wanted" "$CONSTRAINTS"; then
    echo "floor venv $VENV is up to date with pyproject.toml's floors"
else
    start=$(date +%s)
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    cp "$wanted" "$CONSTRAINTS"
    # torch first, as in the Makefile: the CPU build, so no CUDA wheels are pulled in by what follows.
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
    # pip says why a floor cannot be installed (a dependency that needs more) only above --quiet: keep its log.
    if ! "$VENV/bin/python" -m pip install -c "$CONSTRAINTS" -e ".[eval]" pytest hypothesis >"$VENV/pip.log" 2>&1; then
        grep -v "^WARNING: Location" "$VENV/pip.log" | tail -25
        echo "the declared floors cannot be installed together (log: $VENV/pip.log)" >&2
        exit 1
    fi
    touch "$STAMP"
    echo "floor venv $VENV installed in $(($(date +%s) - start)) s"
fi

# What was installed, checked against the floors: a pin that did not take would make the stage prove nothing.
"$VENV/bin/python" - "$CONSTRAINTS" <<'EOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, version

wrong = []
print("installed at the floor:")
for line in open(sys.argv[1], encoding="utf-8"):
    pinned = re.match(r"^([A-Za-z0-9._-]+)==([^;\s]+)", line)
    if not pinned:
        continue
    name, floor = pinned.groups()
    try:
        installed = version(name)
    except PackageNotFoundError:
        continue  # pinned but not part of this install (the other dev tools)
    same = installed.split("+")[0].split(".") + ["0"] * 3
    print(f"  {name:14} {installed}")
    if [int(p) if p.isdigit() else p for p in same[:3]] != [
        int(p) if p.isdigit() else p for p in (floor.split("+")[0].split(".") + ["0"] * 3)[:3]
    ]:
        wrong.append(f"{name} {installed} (floor {floor})")
if wrong:
    sys.exit("not at the floor: " + ", ".join(wrong))
EOF
"$VENV/bin/python" -m pip check

"$VENV/bin/python" -m pytest -m floor -q -p no:cacheprovider -rs "$@"
