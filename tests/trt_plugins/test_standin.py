"""TensorRT stand-in (no GPU, no TensorRT runtime): the plugin libraries as `phm-build-plugins`
builds them (their own CMake project, the public TensorRT headers) against a stub libnvinfer.so.10
that holds a plugin registry, loaded exactly as each tool loads them:

    trtexec --staticPlugins       dlopen(LIB, RTLD_LAZY) in a process linked to libnvinfer
    trtexec --dynamicPlugins      IPluginRegistry::loadLibrary(LIB_dyn): dlopen + getCreators
    polygraphy --plugins          ctypes.CDLL(LIB) in a Python whose TensorRT bindings hold
                                  libnvinfer privately (RTLD_LOCAL)
    trt.get_plugin_registry().load_library(LIB_dyn), TrtBackend   phm.trt_plugins.library.load_plugins

Each must register PHMLinear and PHMFFN (version 1, namespace "phm": what the ONNX parser looks up)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from standin_kit import AVAILABLE, MISSING, build_standin, cmake_plugins, host_program

from phm.trt_plugins import spec

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=MISSING)
EXPECTED = sorted(f"{op.op_type}/{spec.PLUGIN_VERSION}/{spec.PLUGIN_NAMESPACE}" for op in (spec.PHM_LINEAR, spec.PHM_FFN))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    built = build_standin(root)
    return {"host": host_program(root, built["nvinfer"]), **built}


def _registered(line: str) -> list[str]:
    return sorted(x for x in line.split()[-1].split(";") if x) if line.split()[1] != "0" else []


@pytest.mark.parametrize("how,lib", [("static", "phm_trt_plugins"), ("dynamic", "phm_trt_plugins_dyn")])
def test_standin_trtexec_loads_the_plugins(built, how, lib):
    run = subprocess.run([str(built["host"]), how, str(built[lib])], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert _registered(run.stdout.strip()) == EXPECTED


PYTHON_LOAD = textwrap.dedent("""
    import ctypes, json, sys
    # what TensorRT's Python bindings do: libnvinfer is loaded privately, its symbols not global
    nvinfer = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
    how, lib = sys.argv[2], sys.argv[3]
    if how == "ctypes":                                    # polygraphy --plugins
        ctypes.CDLL(lib)
    else:                                                  # TrtBackend / build_engine: load_plugins(trt, lib)
        from pathlib import Path
        from phm.trt_plugins.library import load_plugins

        class Registry:                                    # trt.get_plugin_registry() of the stand-in
            def load_library(self, path):
                return nvinfer.standin_load_library(path.encode()) or None

        class Trt:
            def get_plugin_registry(self):
                return Registry()

        if how == "static-then-load_plugins":              # the creators registered already
            ctypes.CDLL(lib)
        try:
            load_plugins(Trt(), Path(lib))
        except OSError as e:
            print("refused:", e, file=sys.stderr)
    buf = ctypes.create_string_buffer(1024)
    n = nvinfer.standin_registered(buf, 1024)
    print(json.dumps(sorted(x for x in buf.value.decode().split(";") if x)))
""")


@pytest.mark.parametrize("how,lib", [("ctypes", "phm_trt_plugins"), ("load_plugins", "phm_trt_plugins")])
def test_standin_python_loads_the_plugins(built, how, lib):
    """polygraphy's ctypes.CDLL and the runtime's load_plugins (the _dyn twin through the registry's
    load_library) in a process that holds libnvinfer without RTLD_GLOBAL, as TensorRT's wheel and
    JetPack's bindings do: the plugin library finds getPluginRegistry through its own DT_NEEDED."""
    run = subprocess.run([sys.executable, "-c", PYTHON_LOAD, str(built["nvinfer"]), how, str(built[lib])],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == EXPECTED


def test_standin_plugin_library_links_libnvinfer_and_exports_only_its_entry_points(built):
    """DT_NEEDED libnvinfer.so.10; the dynamic symbols it defines are the plugin entry points, so its
    launcher copy never interposes on (or binds to) libphm_kernels.so's phm_* in the same process."""
    dyn = subprocess.run(["readelf", "-d", str(built["phm_trt_plugins"])], capture_output=True, text=True).stdout
    assert "Shared library: [libnvinfer.so.10]" in dyn
    for lib in ("phm_trt_plugins", "phm_trt_plugins_dyn"):
        nm = subprocess.run(["nm", "-D", "--defined-only", str(built[lib])], capture_output=True, text=True).stdout
        names = {ln.split()[-1] for ln in nm.splitlines() if ln.split()[1] in "TtDdBbRr"}
        assert not [n for n in names if n.startswith("phm_")], lib
        assert {"getCreators", "setLoggerFinder"} <= names
    nm = subprocess.run(["nm", "-D", "--defined-only", str(built["phm_kernels"])], capture_output=True, text=True).stdout
    assert "phm_linear_launch" in nm  # the launcher library itself keeps its C API


def test_standin_headers_without_libnvinfer_build_the_launcher_only(tmp_path):
    """No libnvinfer to link: CMake builds the launcher library and skips the plugins (a plugin
    library that would fail to load is not built)."""
    proc = cmake_plugins(tmp_path, None)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert (tmp_path / "build" / "libphm_kernels.so").is_file()
    assert not (tmp_path / "build" / "libphm_trt_plugins.so").exists()


def test_standin_static_registration_without_a_registry_is_one_logged_line(built):
    """A libnvinfer that hands out no registry: loading the static library neither crashes nor throws;
    it says so in one line through TensorRT's logger (no logger finder exists yet on the static path)
    and registers nothing."""
    import os

    run = subprocess.run([str(built["host"]), "static", str(built["phm_trt_plugins"])], capture_output=True,
                         text=True, env={**os.environ, "STANDIN_NO_REGISTRY": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("registered 0")
    # through TensorRT's logger (the stub's prints "[standin <severity>]"; kERROR = 1), not bare stderr
    assert "[standin 1] static registration: TensorRT returned no plugin registry" in run.stderr


def test_standin_load_plugins_reports_a_refused_library(built):
    """The registry refuses the _dyn library when the static one already registered the creators:
    load_plugins says so instead of going on without plugins."""
    run = subprocess.run([sys.executable, "-c", PYTHON_LOAD, str(built["nvinfer"]), "static-then-load_plugins",
                          str(built["phm_trt_plugins"])], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: TensorRT's plugin registry did not load" in run.stderr
