"""Build helpers of the TensorRT stand-in tests: the public TensorRT headers, fake AOT kernels (the
real cubins need Triton's compiler; the plugins only see the table), the stub libnvinfer.so.10 and
the plugin libraries built by their own CMake project against it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from phm.trt_plugins import aot
from phm.trt_plugins.build import PLUGINS_DIR, cmake_configure_args, find_tensorrt_include

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin"
# $TENSORRT_ROOT or a system install, else the public TensorRT 10.3 headers that the development
# machines and CI keep beside the checkout (never copied into the repo)
TRT_INCLUDE = find_tensorrt_include(None) or find_tensorrt_include(
    HERE.parents[2] / "shared" / "third_party" / "tensorrt-10.3")
CUDA_INCLUDE = Path("/usr/local/cuda/include")
MISSING = ("needs TensorRT headers (TENSORRT_ROOT, a system install or ../shared/third_party/tensorrt-10.3), "
           "g++, cmake and cuda.h")
AVAILABLE = (TRT_INCLUDE is not None and shutil.which("g++") is not None and shutil.which("cmake") is not None
             and (CUDA_INCLUDE / "cuda.h").exists())


def fake_generated(out: Path, archs=(90,), shared: int = 0) -> list:
    """generated/ sources for `archs` with placeholder images (what the launcher tables hold)."""
    specs = aot.all_specs(list(archs), ns=(2,))
    fake = [{"symbol": s.symbol, "entry": "k", "cubin": b"\x7fELF" + s.symbol.encode(), "shared": shared,
             "threads": s.config.num_warps * 32, "num_params": 17 if s.family == "phm_linear" else 20,
             "ptx_version": "-", "ptx_target": "-"} for s in specs]
    return aot.write_sources(specs, fake, out)


def stub_nvinfer(out: Path) -> Path:
    """The stand-in libnvinfer.so.10 (soname libnvinfer.so.10, as TensorRT's)."""
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libnvinfer.so.10"
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                    "-Wno-deprecated-declarations", "-isystem", str(TRT_INCLUDE), "-isystem", str(CUDA_INCLUDE),
                    "-Wl,-soname,libnvinfer.so.10", str(STANDIN / "nvinfer_stub.cpp"), "-o", str(lib), "-ldl"],
                   check=True)
    return lib


def host_program(out: Path, nvinfer: Path) -> Path:
    """A trtexec-like host linked against the stub libnvinfer (standin/host.c)."""
    exe = out / "host"
    subprocess.run(["gcc", "-std=gnu11", str(STANDIN / "host.c"), "-o", str(exe), str(nvinfer), "-ldl",
                    f"-Wl,-rpath,{nvinfer.parent}"], check=True)
    return exe


def cmake_plugins(out: Path, nvinfer: Path | None) -> subprocess.CompletedProcess:
    """Configure + build trt_plugins/plugins with fake kernels; the libraries land in out/build."""
    gen = out / "generated"
    fake_generated(gen)
    build = out / "build"
    configure = subprocess.run(["cmake", "-S", str(PLUGINS_DIR), "-B", str(build), "-G", "Ninja",
                                *cmake_configure_args(gen, TRT_INCLUDE, nvinfer)], capture_output=True, text=True)
    if configure.returncode != 0:
        return configure
    return subprocess.run(["cmake", "--build", str(build), "--parallel", "2"], capture_output=True, text=True)
