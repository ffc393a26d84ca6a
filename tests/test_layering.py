"""Imports point one way, servers need no torch, and the public surface is pinned.

The rule (STYLE.md section 1): ``dataloader → sdk → {metadata, cache_l1_l2, flash_l3,
blockstore_sim} → rpc → core``, with ``region``, ``cli`` and ``demo`` on top as the wiring.
The tier packages never import one another. Core is every top-level module of the package
(``config``, ``chunks``, ``records``, ``errors``…): it imports no part above it. Checked on
the source with ``ast``, so an import inside a function or under ``TYPE_CHECKING`` counts
as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import blobtier

PKG = pathlib.Path(blobtier.__file__).parent
TIERS = {"metadata", "blockstore_sim", "flash_l3", "cache_l1_l2"}
TOP = {"region", "cli", "demo", "plan"}  # wiring, orchestration and the what-if planner (over every part)
# ``api`` is ``blobtier`` itself (``connect``, ``Client``): for the plugins above the SDK.
LAYER = {"rpc": 1, **{t: 2 for t in TIERS}, "sdk": 3, "api": 3, "dataloader": 4, **{t: 5 for t in TOP}}


def part_of(module: str) -> str:
    """The part a module belongs to: its sub-package, ``core`` for the package's own
    modules, or ``api`` for ``blobtier`` itself (its ``__init__``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return parts[1] if parts[1] in LAYER and parts[1] != "api" else "core"


def layer(part: str) -> int:
    return LAYER.get(part, 0)


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py") if "gen" not in p.relative_to(PKG).parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: str | None = None) -> list[tuple[str, str]]:
    """``(target module, how)`` for every blobtier import in ``module``; ``how`` is
    ``top`` (runs when the module is imported), ``deferred`` (inside a function) or
    ``typing`` (under ``if TYPE_CHECKING``). ``from a import b`` names ``a.b`` when that is
    a module."""
    path = MODULES[module]
    tree = ast.parse(source if source is not None else path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "deferred" if how == "top" else how)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), how)
            elif isinstance(child, ast.Import):
                found.extend((a.name, how) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, how))
            else:
                visit(child, how)

    visit(tree, "top")
    return [(t, how) for t, how in found if t == "blobtier" or t.startswith("blobtier.")]


def upward_imports(sources: dict[str, str] | None = None) -> list[str]:
    """Every import that breaks the rule, as ``module imports target (how)``."""
    sources = sources or {}
    bad = []
    for module in sorted(MODULES):
        src = part_of(module)
        for target, how in imports_of(module, sources.get(module)):
            part = part_of(target)
            if src == "api" or part == src or src in TOP:
                continue
            if layer(part) >= layer(src):
                bad.append(f"{module} imports {target} ({how})")
    return sorted(set(bad))


def cycles(sources: dict[str, str] | None = None) -> list[list[str]]:
    """Strongly connected components (more than one module) of the import graph, every
    kind of import counted: a deferred import that closes a loop is a loop all the same."""
    sources = sources or {}
    graph = {m: {t for t, _ in imports_of(m, sources.get(m)) if t in MODULES and t != m}
             for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


# Nothing is exempt: the state file of a running region (runstate) is core and reads
# config; config imports no part of blobtier above it.
KNOWN_UPWARD: set[str] = set()
KNOWN_CYCLES: list[list[str]] = []


def test_imports_point_one_way():
    assert [b for b in upward_imports() if b not in KNOWN_UPWARD] == []


def test_no_import_cycles():
    assert [c for c in cycles() if c not in KNOWN_CYCLES] == []


@pytest.mark.parametrize("module, line", [
    ("blobtier.chunks", "from blobtier.sdk.chain import TierChain"),                 # core → sdk
    ("blobtier.config", "def f():\n    from blobtier.flash_l3 import cache"),       # core → tier, deferred
    ("blobtier.rpc.status", "from blobtier.metadata import store"),                 # rpc → tier
    ("blobtier.flash_l3.cache", "from blobtier.blockstore_sim import volume"),      # tier → tier
    ("blobtier.metadata.store", "if TYPE_CHECKING:\n    from blobtier.sdk import client"),  # typing
])
def test_an_added_upward_import_is_caught(module, line):
    source = MODULES[module].read_text() + "\n" + line + "\n"
    assert [b for b in upward_imports({module: source}) if b.startswith(f"{module} ")]


def test_an_added_cycle_is_caught():
    source = MODULES["blobtier.errors"].read_text() + "\ndef f():\n    from blobtier import checksum\n"
    assert ["blobtier.checksum", "blobtier.errors"] in cycles({"blobtier.errors": source})


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter in which importing torch fails loudly."""
    guard = textwrap.dedent("""
        import sys
        class _NoTorch:
            tried = []
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    self.tried.append(name)
                    raise ImportError(f"{name} imported by a module that must not need it")
                return None
        sys.meta_path.insert(0, _NoTorch())
    """)
    proc = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_blobtier_is_cheap():
    out = _run("""
        import blobtier
        mods = sorted(m for m in sys.modules if m.startswith(("blobtier", "rocksdict", "grpc",
                                                             "numpy", "fsspec", "prometheus_client")))
        print(mods)
        blobtier.Client, blobtier.connect, blobtier.BlobInfo
        print("blobtier.sdk.client" in sys.modules)
    """)
    loaded, after = out.splitlines()
    # The package and its exception tree; the SDK (and RocksDB, gRPC, the daemon) only
    # when a name that needs it is first used.
    assert loaded == str(["blobtier", "blobtier.errors"])
    assert after == "True"


# Each server entry point: the class it serves with, and the parts it must not load.
_SDK = ("blobtier.sdk", "blobtier.dataloader")
SERVERS = {
    "blobtier.blockstore_sim.chunk_server": ("ChunkServer", _SDK + (
        "blobtier.metadata", "blobtier.flash_l3", "blobtier.cache_l1_l2", "rocksdict")),
    "blobtier.flash_l3.service": ("FlashNode", _SDK + (
        "blobtier.metadata", "blobtier.blockstore_sim", "blobtier.cache_l1_l2", "rocksdict")),
    "blobtier.cache_l1_l2.daemon": ("HostDaemon", _SDK + (
        "blobtier.metadata", "blobtier.flash_l3", "blobtier.blockstore_sim", "rocksdict")),
    "blobtier.metadata.service": ("MetadataServer", _SDK + (
        "blobtier.flash_l3", "blobtier.blockstore_sim", "blobtier.cache_l1_l2")),
}


@pytest.mark.parametrize("module", sorted(SERVERS))
def test_servers_import_without_torch_sdk_or_other_tiers(module):
    name, forbidden = SERVERS[module]
    out = _run(f"""
        from {module} import {name}
        print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))
        print(_NoTorch.tried)
    """)
    loaded, tried = out.splitlines()
    assert loaded == "[]", f"{module} loads {loaded}"
    assert tried == "[]", f"{module} tries to import {tried}"


def test_cli_imports_without_torch_and_dataloader_says_what_to_install():
    out = _run("""
        import blobtier, blobtier.cli, blobtier.sdk.client, blobtier.metadata.rocksdb_store
        import blobtier.blockstore_sim.volume, blobtier.cache_l1_l2.l1, blobtier.cache_l1_l2.wire
        print(_NoTorch.tried)
        try:
            import blobtier.dataloader
        except ImportError as e:
            print(e)
    """)
    tried, message = out.splitlines()[:2]
    assert tried == "[]"
    assert "blobtier[torch]" in message


def test_config_names_the_tiers_policies_without_importing_them():
    from blobtier import config, eviction
    from blobtier.flash_l3 import admission

    assert sorted(config.ADMISSION_POLICIES) == sorted(admission.POLICIES)
    for field, name in (("flash_admission", "second-hit"), ("daemon_policy", "sieve")):
        config.from_mapping({"root": "/tmp/r", "services": {field: name}})
        with pytest.raises(blobtier.InvalidRequest, match=f"services.{field} must be one of"):
            config.from_mapping({"root": "/tmp/r", "services": {field: "bogus"}})
    assert "sieve" in eviction.POLICIES


def test_public_api_is_pinned():
    assert sorted(blobtier.__all__) == sorted([
        "BlobInfo", "BlobNotFound", "BlobtierError", "ChecksumError", "Client", "CorruptRecord",
        "Forbidden", "InvalidKey", "InvalidRequest", "RegionLocked", "TierUnavailable",
        "VersionConflict", "__version__", "connect"])
    for name in blobtier.__all__:
        assert hasattr(blobtier, name)
    assert set(blobtier.__all__) <= set(dir(blobtier))


def test_errors_subclass_builtins():
    assert issubclass(blobtier.BlobNotFound, FileNotFoundError)
    assert issubclass(blobtier.InvalidKey, ValueError)
    assert issubclass(blobtier.Forbidden, PermissionError)
    assert issubclass(blobtier.ChecksumError, OSError)
