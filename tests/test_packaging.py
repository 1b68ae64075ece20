"""Packaging: one `phm` namespace, no generic top-level modules; golden files are current."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["phm.common", "phm.trainer", "phm.export", "phm.runtime", "phm.trt_plugins"])
def test_namespace_maps_to_its_folder(name):
    """phm.<stage> is the repo's <stage>/ folder (pyproject's package-dir), not some other copy."""
    mod = importlib.import_module(name)
    assert Path(mod.__file__).resolve().parent == ROOT / name.split(".", 1)[1]


@pytest.mark.parametrize("generic", ["common", "trainer", "export", "runtime", "trt_plugins"])
def test_no_generic_top_level_module(generic):
    # Run from / so the repo root is not on sys.path: only what is installed is importable.
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({generic!r}) is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0


def test_golden_vectors_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tests/golden/make_golden.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
