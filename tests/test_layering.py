"""Imports point one way, servers need no torch, and the public surface is pinned."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import blobtier

PKG = pathlib.Path(blobtier.__file__).parent
TIERS = {"metadata", "blockstore_sim", "flash_l3", "cache_l1_l2"}
ORDER = {"dataloader": 3, "sdk": 2, **{t: 1 for t in TIERS}}
# Modules of a tier that other tiers may import: the record codec, which a flash node needs
# to read a chunk through from the block layer (the wire carries encoded records).
SHARED = {"blobtier.metadata.schema"}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("blobtier.")}


def test_imports_point_one_way():
    bad = []
    for path in PKG.rglob("*.py"):
        part = path.relative_to(PKG).parts[0]
        if part not in ORDER:
            continue
        for name in imported_modules(path):
            target = name.split(".")[1]
            if name in SHARED:
                continue
            if target in ORDER and target != part and ORDER[target] >= ORDER[part]:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert bad == []


def test_core_servers_and_cli_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import blobtier, blobtier.cli, blobtier.sdk.client, blobtier.metadata.rocksdb_store\n"
            "import blobtier.blockstore_sim.volume, blobtier.cache_l1_l2.l1, blobtier.cache_l1_l2.wire\n"
            "try:\n    import blobtier.dataloader\nexcept ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "blobtier[torch]" in proc.stdout


def test_public_api_is_pinned():
    assert sorted(blobtier.__all__) == sorted([
        "BlobInfo", "BlobNotFound", "BlobtierError", "ChecksumError", "Client", "CorruptRecord",
        "Forbidden", "InvalidKey", "InvalidRequest", "RegionLocked", "TierUnavailable",
        "VersionConflict", "__version__", "connect"])
    for name in blobtier.__all__:
        assert hasattr(blobtier, name)


def test_errors_subclass_builtins():
    assert issubclass(blobtier.BlobNotFound, FileNotFoundError)
    assert issubclass(blobtier.InvalidKey, ValueError)
    assert issubclass(blobtier.Forbidden, PermissionError)
    assert issubclass(blobtier.ChecksumError, OSError)
