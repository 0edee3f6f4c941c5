"""The layering rules of SPEC.md, checked from the source's imports.

protocol (no I/O, no clock) <- asyncio <- hub <- app / cli. Imports point down only.
Besides, within ``src/backchannel``:

* no import circles: every import counts, those under ``if TYPE_CHECKING:`` and inside
  functions included (a circle that only typing closes still ties the modules into one
  unit that cannot be understood, tested or moved apart);
* in the hub, only the transports (``hub/transports/``) touch the asyncio layer;
* only the Redis broker (``hub/brokers/redis/``) imports ``redis``, an optional extra;
* only the wire format (``hub/wire.py``) imports ``orjson`` (the ``speed`` extra), and
  it imports under ``try``, so that the core install runs without it.

Each checker takes the package's root folder, so that it is shown to catch what it is
for on a small tree written to ``tmp_path``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
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


def _module_name(path: Path, root: Path = SRC) -> str:
    """The dotted name of ``path``, a file of the package whose folder is ``root``."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _import_nodes(path: Path, module: str) -> Iterator[tuple[str, list[str]]]:
    """Every import statement of ``path`` (anywhere in it) as (the absolute module
    named, the names imported from it; empty for ``import x``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                name = f"{prefix}.{node.module}" if node.module else prefix
            else:
                name = node.module or ""
            yield name, [alias.name for alias in node.names]


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved (with
    ``from m import n``, both ``m`` and ``m.n``: ``n`` may be a module)."""
    names: set[str] = set()
    for name, imported in _import_nodes(path, module or _module_name(path)):
        names.add(name)
        names.update(f"{name}.{alias}" for alias in imported)
    return names


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _extensions(root: Path) -> set[str]:
    """Modules without Python source: compiled extensions, known by their stub (``.pyi``)
    or their built file (``name.cpython-312-x86_64-linux-gnu.so``)."""
    found = {_module_name(path, root) for path in root.rglob("*.pyi")}
    for pattern in ("*.so", "*.pyd"):
        for path in root.rglob(pattern):
            found.add(_module_name(path.with_name(path.name.split(".")[0] + ".py"), root))
    return found - set(_modules(root))


# Layers.


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


# Import circles.


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package at ``root`` it imports.

    ``from m import n`` is an edge to ``m.n`` when that is a module (Python imports the
    submodule; ``m``'s ``__init__`` need not have run to the end), else to ``m``. A
    package's ``__init__`` is a module like any other: importing its submodules makes
    edges. That importing ``m.n`` first imports ``m`` is not an edge: it would make
    every package whose ``__init__`` imports its submodules a circle. A compiled
    extension is a module that imports nothing of ours."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in {*modules, *_extensions(root)}}
    for module, path in modules.items():
        for name, imported in _import_nodes(path, module):
            targets = [f"{name}.{alias}" for alias in imported if f"{name}.{alias}" in graph]
            if len(targets) < len(imported) or not imported:
                targets.append(name)  # names defined in the module itself, or ``import m``
            graph[module].update(t for t in targets if t in graph)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group of modules that import each other (strongly connected
    component), as a path that ends where it starts: a shortest one through the group's
    first module by name. Sorted, so that the result is the same on every run."""
    cycles = []
    for component in _components(graph):
        start = min(component)
        if len(component) == 1 and start not in graph[start]:
            continue
        cycles.append(_shortest_circle(graph, component, start))
    return sorted(cycles)


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan's algorithm, iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def _shortest_circle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself within ``component`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in a component without a circle through it")


def test_no_import_circles() -> None:
    cycles = find_cycles(import_graph(SRC))
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_circle_checker_reports_circles_as_paths(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "__init__.py": "",
            # a -> b only for typing: still an edge.
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
            "b.py": "from . import c\n",  # c is a module: an edge to c, not to the package
            "c.py": "def f():\n    from .a import A\n",  # inside a function: counts too
            "d.py": "from .a import A\n",  # into the circle, not part of it
            # A package's __init__ importing its submodule is an edge like any other.
            "sub/__init__.py": "from .x import X\n",
            "sub/x.py": "from backchannel.sub import helper\nfrom ..sub import Y\n",
            "sub/helper.py": "",
            "self.py": "import backchannel.self\n",
            # A compiled extension (known by its stub) is a module: no edge to the package.
            "fast/__init__.py": "from .slow import f\n",
            "fast/slow.py": "from . import _accel\n",
            "fast/_accel.pyi": "def f() -> None: ...\n",
        },
    )
    assert find_cycles(import_graph(root)) == [
        ["backchannel.a", "backchannel.b", "backchannel.c", "backchannel.a"],
        ["backchannel.self", "backchannel.self"],
        ["backchannel.sub", "backchannel.sub.x", "backchannel.sub"],
    ]


def test_circle_checker_passes_a_tree_without_circles(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "__init__.py": "from .a import A\nfrom . import b\n",
            "a.py": "from .b import B\n",
            "b.py": "from . import c\n",  # c is a module: no edge to the package
            "c.py": "import json\n",
        },
    )
    assert find_cycles(import_graph(root)) == []


# Only the transports touch the asyncio layer.


def asyncio_outside_transports(root: Path) -> list[str]:
    """Hub modules, other than those under ``hub/transports/``, that import the asyncio
    layer (``{package}.asyncio``), as "module imports name"."""
    layer = f"{root.name}.asyncio"
    transports = root / "hub" / "transports"
    found = []
    for module, path in _modules(root).items():
        if not path.is_relative_to(root / "hub") or path.is_relative_to(transports):
            continue
        for name in sorted(_imports(path, module)):
            if name == layer or name.startswith(layer + "."):
                found.append(f"{module} imports {name}")
    return found


def test_only_transports_import_the_asyncio_layer_in_the_hub() -> None:
    found = asyncio_outside_transports(SRC)
    assert not found, "\n".join(found)


def test_asyncio_rule_catches_a_violation(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "hub/__init__.py": "from .transports import ws\n",
            "hub/transports/__init__.py": "",
            "hub/transports/ws.py": "from ...asyncio import ServerConnection\n",
            "hub/session.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..asyncio.connection import Connection\n",
            "hub/wire.py": "from ..protocol.frames import Frame\n",  # I/O-free: fine
            "app/server.py": "from ..asyncio import serve\n",  # not the hub: fine
        },
    )
    assert asyncio_outside_transports(root) == [
        "backchannel.hub.session imports backchannel.asyncio.connection",
        "backchannel.hub.session imports backchannel.asyncio.connection.Connection",
    ]


# Only the wire format imports orjson, and only under try (it is optional).


def orjson_outside_the_wire(root: Path) -> list[str]:
    """Modules that import ``orjson`` other than ``hub/wire.py``, or that import it
    outside a ``try`` whose handler catches ImportError."""
    found = []
    for module, path in _modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
            ):
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "orjson" for name in names):
                if module != "backchannel.hub.wire" or id(node) not in guarded:
                    found.append(module)
    return found


def test_only_the_wire_format_imports_orjson_and_only_if_present(tmp_path: Path) -> None:
    assert orjson_outside_the_wire(SRC) == []
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "hub/wire.py": "import orjson\n",
            "hub/hub.py": "try:\n    import orjson\nexcept ImportError:\n    pass\n",
        },
    )
    assert sorted(orjson_outside_the_wire(root)) == ["backchannel.hub.hub", "backchannel.hub.wire"]


# Only the Redis broker imports redis.


def redis_outside_its_broker(root: Path) -> list[str]:
    """Modules outside ``hub/brokers/redis/`` that import ``redis``."""
    allowed = root / "hub" / "brokers" / "redis"
    return [
        module
        for module, path in _modules(root).items()
        if not path.is_relative_to(allowed)
        and any(name.split(".")[0] == "redis" for name in _imports(path, module))
    ]


def test_only_the_redis_broker_imports_redis() -> None:
    """Redis is an optional extra: nothing else may need it to import."""
    assert redis_outside_its_broker(SRC) == []
    # And the check looks at the right place: the broker does import it.
    assert any(
        name.split(".")[0] == "redis"
        for path in (SRC / "hub" / "brokers" / "redis").glob("*.py")
        for name in _imports(path)
    )


def test_redis_rule_catches_a_violation(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "hub/brokers/redis/broker.py": "import redis.asyncio as redis\n",
            "hub/brokers/redis/errors.py": "from redis.exceptions import RedisError\n",
            "hub/brokers/redis_extra.py": "import redis\n",  # a sibling, not inside
            "app/server.py": "def broker():\n    from redis import Redis\n",
            "hub/hub.py": "from .brokers.redis import broker\n",  # ours, not the library
        },
    )
    assert redis_outside_its_broker(root) == [
        "backchannel.app.server",
        "backchannel.hub.brokers.redis_extra",
    ]


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


#: The modules that may import httpx: each is the one module of an optional extra.
HTTPX_IMPORTERS = [
    "app/proxy.py",  # the proxy extra
    "app/webhooks.py",  # the webhooks extra
    "cli/api.py",  # the cli extra
    "cli/bench.py",  # the cli extra
    "client/http.py",  # the client extra (what its two HTTP transports share)
    "client/longpoll.py",  # the client extra
    "client/sse.py",  # the client extra (with httpx-sse)
]


def httpx_importers(root: Path) -> list[str]:
    """Modules under ``root`` that import httpx or httpx-sse (anywhere in them), as paths."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if any(
            name.split(".")[0] in ("httpx", "httpx_sse")
            for name in _imports(path, _module_name(path, root))
        )
    )


def test_only_the_extras_modules_import_httpx() -> None:
    """httpx is in optional extras: importing anything else must not need it."""
    assert httpx_importers(SRC) == HTTPX_IMPORTERS


def test_httpx_rule_catches_a_violation(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "app/webhooks.py": "import httpx\n",
            "app/server.py": "def hooks():\n    from httpx import AsyncClient\n",
            "app/api.py": "from .webhooks import Webhooks\n",  # ours, not the library
        },
    )
    assert httpx_importers(root) == ["app/server.py", "app/webhooks.py"]


def test_only_the_benchmark_imports_rich() -> None:
    """rich (the cli extra) draws the live progress of ``backchannel bench``: every
    other subcommand, and the server, run without it."""
    importers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(name.split(".")[0] == "rich" for name in _imports(path))
    )
    assert importers == ["cli/bench.py"]


def test_only_the_metrics_module_imports_prometheus_client() -> None:
    """prometheus-client is the metrics extra: the server runs without it when metrics
    are off."""
    importers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(name.split(".")[0] == "prometheus_client" for name in _imports(path))
    )
    assert importers == ["app/metrics.py"]


def asgi_rule_violations(root: Path) -> list[str]:
    """``backchannel.asgi`` is a top layer beside app and cli: it may import app, hub,
    asyncio and protocol (not cli), and nothing of ours imports it."""
    name = f"{root.name}.asgi"
    found = []
    for module, path in _modules(root).items():
        imports = _imports(path, module)
        if module == name or module.startswith(name + "."):
            found += [
                f"{module} imports {i}" for i in sorted(imports) if i.startswith(f"{root.name}.cli")
            ]
        elif any(i == name or i.startswith(name + ".") for i in imports):
            found.append(f"{module} imports {name}")
    return found


def test_nothing_imports_the_asgi_adapter_and_it_imports_no_cli() -> None:
    assert (SRC / "asgi.py").is_file()
    assert asgi_rule_violations(SRC) == []


def test_asgi_rule_catches_a_violation(tmp_path: Path) -> None:
    root = tmp_path / "backchannel"
    _write(
        root,
        {
            "asgi.py": "from .app.api import HttpApi\nfrom .cli import main\n",
            "app/server.py": "def f():\n    from ..asgi import HubApp\n",
            "hub/hub.py": "from ..protocol import frames\n",  # fine
        },
    )
    assert asgi_rule_violations(root) == [
        "backchannel.app.server imports backchannel.asgi",
        "backchannel.asgi imports backchannel.cli",
        "backchannel.asgi imports backchannel.cli.main",
    ]
