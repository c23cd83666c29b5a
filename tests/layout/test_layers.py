"""The appliance never imports its lab: gateway/ and kms_client/ name nothing of qsgw_lab.

Read from the source with ast (not by importing), so a lazy import inside a
function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "kms_client")
LAB = "qsgw_lab"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def _lab_imports(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename=filename)
    return [f"{filename}:{line}: imports {name}"
            for line, name in _imported_modules(tree)
            if name == LAB or name.startswith(LAB + ".")]


def test_product_imports_nothing_from_the_lab() -> None:
    files = [p for pkg in PRODUCT for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50  # the scan found the packages, not an empty tree
    found = [hit for p in files
             for hit in _lab_imports(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


def test_the_scan_sees_every_kind_of_import() -> None:
    source = (
        "import qsgw_lab\n"
        "from qsgw_lab.netns import NetnsLab\n"
        "def f():\n"
        "    import qsgw_lab.sitelab as s\n"
        "    importlib.import_module('qsgw_lab.demo')\n"
        "import qsgw_labs\n"           # another package, not the lab
        "from gateway import config\n"
    )
    assert [hit.split(": ", 1)[1] for hit in _lab_imports(source, "x.py")] == [
        "imports qsgw_lab", "imports qsgw_lab.netns", "imports qsgw_lab.sitelab",
        "imports qsgw_lab.demo",
    ]

