"""Data flows one way: no room imports a room above it, and no module imports another room's privates.

Read from the source with :mod:`ast` (every import, also the lazy ones inside functions), so an
arrow against the flow fails here before it is ever executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kgl"

#: Each unit and what it may import. Low modules (``kgl._utils``, ``kgl._files``, ``kgl._geometry``, ...) belong to
#: no room and import none; ``kgl._spatialdata`` is the SpatialData adapter, at io's level.
ALLOWED = {
    "_low": set(),
    "io": {"_low"},
    "_spatialdata": {"_low", "io"},
    "im": {"_low", "io", "_spatialdata"},
    "models": {"_low"},
    "datasets": {"_low", "io", "im"},
    "tl": {"_low", "io", "_spatialdata", "im", "models"},
    "pl": {"_low", "io", "_spatialdata", "im", "models"},
    "recipes": {"_low", "io", "_spatialdata", "im", "models", "datasets", "tl", "pl", "_top"},  # may `import kgl`
    "_cli": {"_low", "io", "_spatialdata", "im", "models", "datasets", "tl", "pl", "recipes", "_top"},
}
ROOMS = {"io", "im", "models", "datasets", "tl", "pl", "recipes"}


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "_top"
    if parts[1] in ROOMS:
        return parts[1]
    if parts[1] in ("_cli", "__main__"):
        return "_cli"
    return "_spatialdata" if parts[1] == "_spatialdata" else "_low"


def _imports() -> list[tuple[str, int, str, list[str]]]:
    out = []
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kgl":
                out.append((module, node.lineno, node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out += [(module, node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "kgl"]
    return out


IMPORTS = _imports()


def test_the_scan_sees_the_imports():
    """The scan is not vacuous: it finds the known arrows (tl reads models, recipes drive tl and pl)."""
    pairs = {(_unit(m), _unit(t)) for m, _, t, _ in IMPORTS}
    assert {("tl", "models"), ("recipes", "tl"), ("recipes", "pl"), ("im", "io")} <= pairs
    assert len(IMPORTS) > 100


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_no_import_against_the_data_flow(unit):
    bad = [
        f"{m}:{line} imports {t}"
        for m, line, t, names in IMPORTS
        if _unit(m) == unit and _unit(t) != unit and _unit(t) not in ALLOWED[unit] and names != ["__version__"]
    ]
    assert not bad, f"{unit} may import only {sorted(ALLOWED[unit])}: " + "; ".join(bad)


def test_no_private_name_of_another_room():
    """Across rooms, import the room's public names (``from kgl.io import ...``), never its private modules."""
    bad = []
    for m, line, t, names in IMPORTS:
        me, it = _unit(m), _unit(t)
        if me == it or it not in ROOMS:
            continue
        private_module = any(p.startswith("_") for p in t.split(".")[2:])
        private_name = any(n.startswith("_") for n in names)
        if private_module or private_name:
            bad.append(f"{m}:{line} from {t} import {', '.join(names)}")
    assert not bad, "; ".join(bad)
