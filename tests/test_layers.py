"""The layering rule of SPEC.md, checked from the source's imports.

protocol (no I/O, no clock) <- asyncio <- hub <- app / cli. Imports point down only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "backchannel"

# What each layer must not import: stdlib modules by top-level name, our packages by
# dotted prefix.
FORBIDDEN = {
    "protocol": {
        "stdlib": {"asyncio", "socket", "time", "ssl", "selectors", "threading"},
        "ours": {"backchannel.asyncio", "backchannel.hub", "backchannel.app", "backchannel.cli"},
    },
    "asyncio": {
        "stdlib": set(),
        "ours": {"backchannel.hub", "backchannel.app", "backchannel.cli"},
    },
    "hub": {
        "stdlib": set(),
        "ours": {"backchannel.app", "backchannel.cli"},
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module or _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _layer_files() -> list[tuple[str, Path]]:
    return [
        (layer, path)
        for layer in FORBIDDEN
        for path in sorted((SRC / layer).rglob("*.py"))
        if (SRC / layer).is_dir()
    ]


@pytest.mark.parametrize(("layer", "path"), _layer_files(), ids=lambda v: str(v))
def test_imports_point_down(layer: str, path: Path) -> None:
    bad = _violations(layer, _imports(path))
    assert not bad, f"{path.relative_to(SRC)} ({layer} layer) imports {sorted(set(bad))}"


def _violations(layer: str, names: set[str]) -> list[str]:
    rules = FORBIDDEN[layer]
    return sorted(
        name
        for name in names
        if name.split(".")[0] in rules["stdlib"]
        or any(name == o or name.startswith(o + ".") for o in rules["ours"])
    )


def test_checker_catches_violations(tmp_path: Path) -> None:
    """A protocol module importing asyncio or reaching up a layer is caught."""
    sample = tmp_path / "frames.py"
    sample.write_text("import time\nfrom ..asyncio import connect\nfrom .. import exceptions\n")
    names = _imports(sample, "backchannel.protocol.frames")
    assert _violations("protocol", names) == [
        "backchannel.asyncio",
        "backchannel.asyncio.connect",
        "time",
    ]


def test_only_the_redis_broker_imports_redis() -> None:
    """Redis is an optional extra: nothing else may need it to import."""
    importers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(name.split(".")[0] == "redis" for name in _imports(path))
    )
    assert importers == ["hub/redis_broker.py"]


def test_the_client_uses_only_the_wire_format_of_the_hub() -> None:
    """backchannel.client sits above hub beside app: of the hub it may import the wire
    format and the codes only, and nothing of app or cli."""
    allowed = ("backchannel.hub.wire", "backchannel.hub.codes")
    bad = []
    for path in sorted((SRC / "client").rglob("*.py")):
        for name in _imports(path):
            above = _violations("hub", {name})  # app and cli
            if above or (
                name.startswith("backchannel.hub.")
                and not any(name == a or name.startswith(a + ".") for a in allowed)
            ):
                bad.append(f"{path.relative_to(SRC)}: {name}")
    assert bad == []


def test_only_the_long_poll_transport_imports_httpx() -> None:
    """httpx is the client extra: importing anything else must not need it."""
    importers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(name.split(".")[0] == "httpx" for name in _imports(path))
    )
    assert importers == ["client/longpoll.py"]
