"""Dependencies point one way, bot -> workflows -> storage, in every module of each layer.

Read from the source with ``ast``, so an import inside a function, or one that only runs on
some path, counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLACK_AND_HTTP = {"slack_bolt", "slack_sdk", "aiohttp"}
FORBIDDEN = {
    "storage": {"workflows", "bot", *SLACK_AND_HTTP},
    "workflows": {"bot", *SLACK_AND_HTTP},
}
MODULES = sorted(path for layer in FORBIDDEN for path in (ROOT / layer).rglob("*.py"))


def imported(source: str) -> set[str]:
    """The top-level packages a module imports, anywhere in it (relative imports left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imports_are_found_anywhere_in_a_module() -> None:
    source = (
        "import os.path\n"
        "from bot.slack import blocks\n"
        "from . import sibling\n"
        "def later():\n"
        "    import aiohttp.web\n"
        "    from slack_sdk import WebClient\n"
        "class A:\n"
        "    if True:\n"
        "        import workflows\n"
    )
    assert imported(source) == {"os", "bot", "aiohttp", "slack_sdk", "workflows"}


def test_every_layer_is_checked() -> None:
    layers = {path.relative_to(ROOT).parts[0] for path in MODULES}
    assert layers == set(FORBIDDEN)
    assert ROOT / "workflows" / "nylas" / "client.py" in MODULES
    assert ROOT / "storage" / "migrations" / "env.py" in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_layer_imports_nothing_above_it(path: Path) -> None:
    layer = path.relative_to(ROOT).parts[0]
    wrong = imported(path.read_text(encoding="utf-8")) & FORBIDDEN[layer]
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
