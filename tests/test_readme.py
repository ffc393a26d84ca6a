"""The README names only files that exist.

Two kinds of names are checked: repository paths in backticks (`blobtier/...`,
`benchmarks/...`, `examples/...`, `tests/...`), and the module paths in its code blocks
(the read-path picture says `sdk/chain.py`, meaning `blobtier/sdk/chain.py`). A renamed
or deleted file then fails here instead of leaving the README pointing at nothing.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BACKTICKED = re.compile(r"`((?:blobtier|benchmarks|examples|tests)/[^`\s]*)`")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_MODULE = re.compile(r"(?<![\w./-])((?:[A-Za-z_][\w-]*/)+[A-Za-z_]\w*\.py)\b")


def named_paths(text: str) -> set[str]:
    """Repository paths the README names in backticks (trailing ``/`` kept: a folder)."""
    return {m.group(1).split("::")[0].rstrip(".,;:") for m in _BACKTICKED.finditer(text)}


def module_paths_in_code(text: str) -> set[str]:
    """``*.py`` paths in fenced code blocks; relative to the root or to ``blobtier/``."""
    return {m.group(1) for block in _FENCE.findall(text) for m in _MODULE.finditer(block)}


def exists(path: str) -> bool:
    return any((base / path).exists() for base in (ROOT, ROOT / "blobtier"))


def test_every_backticked_path_exists():
    names = named_paths(README.read_text())
    assert "blobtier/sdk/chain.py" in names  # the parser finds what it should
    assert sorted(p for p in names if not (ROOT / p).exists()) == []


def test_every_module_in_a_code_block_exists():
    names = module_paths_in_code(README.read_text())
    assert "cache_l1_l2/l1.py" in names
    assert sorted(p for p in names if not exists(p)) == []


def test_a_missing_file_is_caught():
    text = "read via `blobtier/cache_l1_l2/local_l1.py`\n```\n   L1   cache_l1_l2/local_l1.py   x\n```\n"
    assert named_paths(text) == {"blobtier/cache_l1_l2/local_l1.py"}
    assert not exists("blobtier/cache_l1_l2/local_l1.py")
    assert [p for p in module_paths_in_code(text) if not exists(p)] == ["cache_l1_l2/local_l1.py"]
