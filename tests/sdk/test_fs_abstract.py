"""fsspec's own contract tests (copy, get, put, open, pipe) run against ``blobtier://``.

Wired like fsspec's memory and s3fs derived tests. blobtier has object-store directories
(a prefix exists while a key is under it), so ``supports_empty_directories`` is False: the
suite then puts a dummy file where it needs an existing directory, as it does for s3fs.
"""

from __future__ import annotations

import uuid

import fsspec
import fsspec.tests.abstract as abstract
import pytest

from blobtier.sdk.fs import BlobtierFileSystem


class BlobtierFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self):
        # The default region: $BLOBTIER_HOME, a fresh temp dir per test (tests/conftest.py).
        fs = fsspec.filesystem("blobtier")
        assert isinstance(fs, BlobtierFileSystem)
        yield fs
        BlobtierFileSystem.clear_instance_cache()

    @pytest.fixture
    def fs_join(self):
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self):
        return f"abstract/{uuid.uuid4().hex[:8]}"

    @pytest.fixture
    def supports_empty_directories(self):
        return False


class TestBlobtierCopy(abstract.AbstractCopyTests, BlobtierFixtures):
    pass


class TestBlobtierGet(abstract.AbstractGetTests, BlobtierFixtures):
    pass


class TestBlobtierPut(abstract.AbstractPutTests, BlobtierFixtures):
    pass


class TestBlobtierOpen(abstract.AbstractOpenTests, BlobtierFixtures):
    pass


class TestBlobtierPipe(abstract.AbstractPipeTests, BlobtierFixtures):
    pass
