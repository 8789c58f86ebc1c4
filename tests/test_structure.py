"""The package keeps its structure: no import circle between its modules (imports inside functions included)
and no module over 500 lines. `python tools/check_structure.py` prints the same findings."""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_structure.py"


def _tool():
    spec = importlib.util.spec_from_file_location("check_structure", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_and_no_long_module():
    assert _tool().check() == []


def test_the_check_finds_a_circle_through_an_import_inside_a_function(tmp_path):
    package = tmp_path / "src" / "symnoise"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (package / "c.py").write_text("x = 1\n" * 12)
    problems = _tool().check(package, max_lines=10)
    assert problems[0].endswith("c.py: 12 lines (limit 10)")
    assert (
        problems[1]
        == "import circle of 2 modules: symnoise.a -> symnoise.b (line 1); symnoise.b -> symnoise.a (line 2)"
    )
    assert len(problems) == 2
