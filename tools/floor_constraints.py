"""Write a pip constraints file that pins every dependency of symnoise to the lowest version it declares.

    python tools/floor_constraints.py [--extra eval --extra dev] [--skip torch] [-o constraints.txt]

Reads ``pyproject.toml``: the ``dependencies`` and the named optional extras. Each requirement with a lower bound
(``>=X`` or ``==X``) becomes ``name==X``; a requirement with only an upper bound (``setuptools<81``) is kept as
written; one without any bound is an error, since "its floor" would then mean nothing. ``--skip NAME`` leaves a
package out (written as a comment, with the reason it was skipped), for a package whose floor cannot be installed
on this machine, such as torch's CUDA-only old wheels. Environment markers are kept. When two entries name the
same package, the higher floor wins, because both must hold.

Installing with ``pip install -c FILE`` then gives every direct dependency exactly its declared floor; the
packages those pull in are resolved normally (newest that fits).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.+))?$"
)
FLOOR = re.compile(r"(?:>=|==|~=)\s*(?P<version>[0-9][A-Za-z0-9.+!-]*)")
UPPER_ONLY = re.compile(r"^\s*(?:<|<=|!=)")


class FloorError(ValueError):
    """A requirement in pyproject.toml that has no floor to pin, or an extra that does not exist."""


def normalise(name: str) -> str:
    """The package name as pip compares it (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple:
    """Order plain release numbers (``0.4.5`` < ``0.13``); enough to pick the higher of two declared floors."""
    return tuple(int(part) if part.isdigit() else -1 for part in re.split(r"[.+!-]", version))


def floor_line(requirement: str) -> tuple[str, str]:
    """``(normalised name, constraint line)`` for one requirement string of pyproject.toml."""
    match = REQUIREMENT.match(requirement)
    if not match:
        raise FloorError(f"pyproject.toml: cannot read the requirement {requirement!r}")
    name, spec, marker = match["name"], match["spec"], match["marker"]
    suffix = f"; {marker}" if marker else ""
    floor = FLOOR.search(spec)
    if floor:
        return normalise(name), f"{name}=={floor['version']}{suffix}"
    if spec and all(UPPER_ONLY.match(part) for part in spec.split(",")):
        return normalise(name), f"{name}{spec}{suffix}"
    raise FloorError(
        f"pyproject.toml: {requirement!r} declares no lower bound; give it one (>=X) so its floor can be tested"
    )


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The core dependencies followed by those of each named extra, in the order given."""
    declared = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in declared]
    if unknown:
        raise FloorError(
            f"pyproject.toml has no extra {unknown[0]!r}; its extras are {', '.join(sorted(declared))}"
        )
    listed = list(project.get("dependencies", []))
    for extra in extras:
        listed.extend(declared[extra])
    return listed


def constraint_lines(project: dict, extras: list[str], skip: set[str]) -> list[str]:
    """One line per package: its pinned floor, the higher one where two entries name it; skipped ones as comments."""
    pins: dict[str, str] = {}
    for requirement in requirements(project, extras):
        name, line = floor_line(requirement)
        current = pins.get(name)
        if current is None or ("==" in line and "==" in current and higher(line, current)):
            pins[name] = line
    lines = []
    for name, line in pins.items():
        if name in skip:
            lines.append(f"# {line}  (skipped: not installed at its floor here)")
        else:
            lines.append(line)
    return lines


def higher(line: str, other: str) -> bool:
    """Whether the pinned version in ``line`` is above the one in ``other``."""
    pinned = [version_key(text.split("==", 1)[1].split(";", 1)[0].strip()) for text in (line, other)]
    return pinned[0] > pinned[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    parser.add_argument(
        "--extra", action="append", default=[], help="an optional extra to include (repeatable)"
    )
    parser.add_argument(
        "--skip", action="append", default=[], help="a package to leave unpinned (repeatable)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write the file (default: standard output)"
    )
    args = parser.parse_args(argv)
    try:
        project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))["project"]
        lines = constraint_lines(project, args.extra, {normalise(name) for name in args.skip})
    except (OSError, KeyError, tomllib.TOMLDecodeError, FloorError) as error:
        print(f"floor_constraints: {error}", file=sys.stderr)
        return 2
    header = f"# The declared floor of every dependency, from {args.pyproject.name} (extras: {', '.join(args.extra) or 'none'})"
    text = "\n".join([header, *lines]) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
