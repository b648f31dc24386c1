"""The README's layout table matches the tree: every path it names exists, and every
module of the package is named by a row (its own path, its directory, or a file list
of ``name.py`` items in the row of its directory)."""

import re
from pathlib import Path

from tests.conftest import ROOT


def layout_rows() -> list[tuple[list[str], str]]:
    """(paths in backticks of the first cell, the second cell) of each table row."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return rows


def covered(module: Path, rows) -> bool:
    rel = module.relative_to(ROOT).as_posix()
    for paths, holds in rows:
        for path in paths:
            if rel == path or (path.endswith("/") and rel.startswith(path)
                               and (module.name == "__init__.py"
                                    or f"`{module.name}`" in holds
                                    or "/" in rel[len(path):])):
                return True
    return False


def test_every_path_in_the_layout_table_exists():
    rows = layout_rows()
    assert len(rows) > 10
    missing = [p for paths, _ in rows for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"


def test_every_module_is_in_the_layout_table():
    rows = layout_rows()
    modules = [m for m in sorted((ROOT / "lm").rglob("*.py"))
               if "__pycache__" not in m.parts and m != ROOT / "lm" / "__init__.py"]
    absent = [m.relative_to(ROOT).as_posix() for m in modules if not covered(m, rows)]
    assert not absent, f"modules missing from the README layout table: {absent}"


def test_a_module_left_out_is_caught():
    rows = [(["lm/data/"], "`corpus.py`, `tokens.py`")]
    assert covered(ROOT / "lm" / "data" / "corpus.py", rows)
    assert not covered(ROOT / "lm" / "data" / "datamodule.py", rows)
