"""Import direction: procguardctl may use procguard's leaves, never the other way (STYLE.md, Layout)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "procguard"


def imported_roots(source: str) -> set[str]:
    """The top-level packages a module imports anywhere in it (lazy imports inside functions too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_procguard_module_imports_procguardctl():
    """procguard (the daemon and its test support, procguard.testing) never imports the client package."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50 and PACKAGE / "testing" / "__init__.py" in files
    upward = [str(f.relative_to(PACKAGE.parent)) for f in files if "procguardctl" in imported_roots(f.read_text())]
    assert not upward, f"procguard modules importing procguardctl: {upward}"


def test_the_rule_sees_lazy_and_from_imports():
    assert imported_roots("def f():\n    from procguardctl.endpoint import find\n") == {"procguardctl"}
    assert imported_roots("import procguardctl.client as c\n") == {"procguardctl"}
    assert "procguardctl" not in imported_roots("from procguard.protocol import ClientSettings\n")
