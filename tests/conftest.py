"""Shared fixtures: an isolated vectors cache, tiny vectors and a folder corpus (the helpers
they use, and the tests' other helpers, are in tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.helpers import make_folder_corpus, write_vectors


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test parses vectors into its own session cache, never ~/.cache."""
    monkeypatch.setenv("EMBCACHE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vcache"))


@pytest.fixture(scope="session")
def vectors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vec") / "tiny.txt"
    table = write_vectors(path)
    return path, table


@pytest.fixture
def folder_corpus(tmp_path):
    root = tmp_path / "corpus"
    make_folder_corpus(root)
    return root
