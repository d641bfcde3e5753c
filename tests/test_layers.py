"""The layering, checked on the package as it installs: import-linter's contracts (pyproject.toml,
``[tool.importlinter]``) and no import cycles, on a copy of the sources laid out as the wheel
lays them out (``embcache/``, ``embcache/cache/`` ...: import-linter reads packages from one
folder tree, and the repository maps four folders into one package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """The package's modules copied to ``<tmp>/embcache/...`` by pyproject's package-dir map."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out = tmp_path_factory.mktemp("layout")
    for package in config["packages"]:
        src = ROOT / config["package-dir"][package]
        dst = out.joinpath(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy(f, dst / f.name)
    return out


def test_import_linter_contracts(installed_layout):
    env = {**os.environ, "PYTHONPATH": str(installed_layout)}
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config",
                        str(ROOT / "pyproject.toml"), "--no-cache"], capture_output=True, text=True,
                       env=env, cwd=installed_layout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in r.stdout


def _graph(layout: Path):
    import grimp

    sys.path.insert(0, str(layout))
    saved = {k: v for k, v in sys.modules.items() if k == "embcache" or k.startswith("embcache.")}
    for k in saved:  # grimp must find the copy, not the installed package
        del sys.modules[k]
    try:
        return grimp.build_graph("embcache", cache_dir=None, exclude_type_checking_imports=True)
    finally:
        sys.path.remove(str(layout))
        sys.modules.update(saved)


def test_no_module_imports_its_importer(installed_layout):
    """No import cycles: no module reaches, through its imports, a module that imports it."""
    graph = _graph(installed_layout)
    modules = sorted(graph.modules)
    assert "embcache.cache.store" in modules and "embcache.jobs.train" in modules
    cycles = []
    for a in modules:
        for b in graph.find_modules_directly_imported_by(a):
            if a != b and graph.chain_exists(importer=b, imported=a):
                cycles.append(" -> ".join(graph.find_shortest_chain(importer=b, imported=a)) + f" -> {b}")
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_store_layer_imports_no_job_or_model(installed_layout):
    graph = _graph(installed_layout)
    bad = [(m, i) for m in graph.modules if m.startswith("embcache.cache")
           for i in graph.find_modules_directly_imported_by(m)
           if i.startswith(("embcache.jobs", "embcache.models"))]
    assert not bad
