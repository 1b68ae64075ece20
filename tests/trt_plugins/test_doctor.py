"""phm-doctor: one table of what this machine has for the PHM TensorRT plugins, a non-zero exit and
one `missing:` line (with its fix) per failing row. On this CPU machine most rows fail; with the
TensorRT stand-in (stub libnvinfer + the CMake-built plugin library) the library rows pass."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner
from standin_kit import AVAILABLE, MISSING, build_standin, fake_libcuda

from phm.trt_plugins.doctor import main

ROWS = ["TensorRT Python", "libnvinfer", "CUDA driver", "GPU", "CUDA toolkit", "plugin library",
        "loads: polygraphy (ctypes)", "loads: TensorRT registry", "driver accepts cubins"]


def _rows(output: str) -> dict[str, str]:
    """{check: status} of the printed table."""
    out = {}
    for line in output.splitlines():
        for name in ROWS:
            if line.startswith(name + "  "):
                out[name] = line[len(name):].split()[0]
    return out


def _run(args, monkeypatch):
    monkeypatch.delenv("PHM_PLUGINS", raising=False)
    return CliRunner().invoke(main, [str(a) for a in args])


def test_doctor_on_a_machine_without_tensorrt_or_gpu(tmp_path, monkeypatch):
    res = _run(["--plugins", tmp_path / "none"], monkeypatch)
    rows = _rows(res.stdout)
    assert list(rows) == ROWS
    assert res.exit_code == 1 and "Traceback" not in res.output
    failed = [name for name, status in rows.items() if status == "FAIL"]
    missing = [ln for ln in res.stderr.splitlines() if ln.startswith("missing: ")]
    assert [ln.split(":")[1].strip() for ln in missing] == [n.split(":")[0] if ":" in n else n for n in failed]
    assert all(" → " in ln and ln.split(" → ")[1] for ln in missing)  # every failure names its fix
    if importlib.util.find_spec("tensorrt") is None:
        assert rows["TensorRT Python"] == "FAIL"
    assert rows["plugin library"] == "FAIL" and rows["driver accepts cubins"] == "FAIL"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor-standin")
    return {**build_standin(root), "cuda": fake_libcuda(root / "cuda").parent}


@pytest.mark.skipif(not AVAILABLE, reason=MISSING)
def test_doctor_with_the_standin_libraries(standin, monkeypatch):
    """The stand-in libnvinfer and a plugin library built against it: libnvinfer's version is read,
    the library is found and loads the way polygraphy loads it; the GPU rows still fail here."""
    res = _run(["--plugins", standin["phm_trt_plugins"], "--tensorrt-lib", standin["nvinfer"]], monkeypatch)
    rows = _rows(res.stdout)
    assert rows["libnvinfer"] == "ok" and "10.3.0" in res.stdout
    assert rows["plugin library"] == "ok" and rows["loads: polygraphy (ctypes)"] == "ok"
    assert res.exit_code == 1  # no GPU, no TensorRT Python here


@pytest.mark.skipif(not AVAILABLE, reason=MISSING)
@pytest.mark.parametrize("sm,verdict", [("90", "ok"), ("87", "FAIL")])
def test_doctor_gpu_rows_with_the_fake_driver(standin, monkeypatch, sm, verdict):
    """With the stand-in's fake libcuda.so.1: the driver version and the GPU's arch are read, and the
    cubins are loaded for real through the launcher (phm_kernels_prepare); on an sm_87 device the
    sm_90-only build fails that row with its fix. Run in a child process: libcuda is found through
    LD_LIBRARY_PATH, which the dynamic loader reads at start."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LD_LIBRARY_PATH": str(standin["cuda"]), "STANDIN_SM": sm, "STANDIN_DRIVER_CUDA": "12.6"}
    env.pop("PHM_PLUGINS", None)
    run = subprocess.run([sys.executable, "-m", "phm.trt_plugins.doctor", "--plugins", str(standin["phm_trt_plugins"]),
                          "--tensorrt-lib", str(standin["nvinfer"])], capture_output=True, text=True, env=env)
    rows = _rows(run.stdout)
    assert rows["CUDA driver"] == "ok" and "12.6" in run.stdout
    assert rows["GPU"] == "ok" and f"TensorRT stand-in GPU sm_{sm}" in run.stdout
    assert rows["driver accepts cubins"] == verdict, run.stdout + run.stderr
    if verdict == "FAIL":
        assert "no PHM kernel compiled for sm_87" in run.stdout
