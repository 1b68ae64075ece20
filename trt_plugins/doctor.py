"""`phm-doctor`: can this machine run the PHM TensorRT plugins? One table, one fix per failure.

    phm-doctor [--plugins DIR|LIB] [--tensorrt-lib FILE]

Rows: TensorRT's Python bindings and libnvinfer (versions), the CUDA driver (its CUDA version), the
GPU and its arch, a CUDA toolkit's ptxas, the plugin library phm-build-plugins wrote (its archs and
the ptxas that made its cubins), whether that library loads the way polygraphy loads it (ctypes
beside a privately loaded libnvinfer) and through TensorRT's registry (`load_library`, as
trtexec --dynamicPlugins, engine builds and phm-run do), and whether the driver accepts the cubins
(the launcher's `phm_kernels_prepare`: a real module load on the GPU). JetPack / TensorRT / driver
mismatches are the usual reason a Jetson build fails; each failing row says what to do. Exit 0
when every row passes, 1 otherwise (then one `missing: …` line per failing row on stderr).
Load checks run in child processes, so a library that crashes on load is a failed row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from phm.common.cliutil import OneLineCommand
from phm.trt_plugins.build import find_nvinfer
from phm.trt_plugins.library import PLUGIN_LIBRARY, dynamic_library
from phm.trt_plugins.toolchain import parse_cuda_version, ptxas_version

__all__ = ["Check", "diagnose", "main"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(code: int) -> str:
    """TensorRT's getInferLibVersion / CUDA's version integers: 100300 → 10.3.0, 12060 → 12.6."""
    return f"{code // 10000}.{code // 100 % 100}.{code % 100}" if code >= 100000 else f"{code // 1000}.{code % 1000 // 10}"


def _tensorrt_python() -> Check:
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or an OSError from its libnvinfer
        return Check("TensorRT Python", False, f"import tensorrt: {type(e).__name__}",
                     "pip install tensorrt (desktop) or apt install python3-libnvinfer (JetPack)")
    return Check("TensorRT Python", True, trt.__version__)


def _libnvinfer(lib: Path | None) -> tuple[Check, Path | None]:
    path = find_nvinfer(lib, None) or (Path(p) if (p := ctypes.util.find_library("nvinfer")) else None)
    if path is None:
        return Check("libnvinfer", False, "libnvinfer.so.10 not found",
                     "install TensorRT 10 (JetPack 6 ships 10.3) or pass --tensorrt-lib"), None
    try:
        version = _version(ctypes.CDLL(str(path)).getInferLibVersion())
    except (OSError, AttributeError) as e:
        return Check("libnvinfer", False, f"{path}: {str(e).splitlines()[0]}", "reinstall TensorRT"), None
    return Check("libnvinfer", True, f"{version} ({path})"), path


def _driver() -> tuple[Check, Check, object, str | None]:
    """(driver row, GPU row, the loaded libcuda or None, the GPU's arch such as "sm_87" or None)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        fix = "install the NVIDIA driver (JetPack on a Jetson); on a machine without a GPU nothing can run"
        return (Check("CUDA driver", False, "libcuda.so.1 not found", fix),
                Check("GPU", False, "no driver", fix), None, None)
    version, count = ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return (Check("CUDA driver", False, "cuInit failed", "check the driver install (nvidia-smi / tegrastats)"),
                Check("GPU", False, "no usable device", "check the driver install"), None, None)
    driver = Check("CUDA driver", True, _version(version.value))
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return driver, Check("GPU", False, "no CUDA device", "check CUDA_VISIBLE_DEVICES and the driver"), None, None
    major, minor, name = ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)  # ..._MINOR
    cuda.cuDeviceGetName(name, 256, 0)
    arch = f"sm_{major.value}{minor.value}"
    return driver, Check("GPU", True, f"{name.value.decode()} {arch}"), cuda, arch


def _toolkit() -> Check:
    for ptxas in [shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"]:
        if ptxas and (v := ptxas_version(ptxas)):
            return Check("CUDA toolkit", True, f"ptxas {v} ({ptxas})")
    return Check("CUDA toolkit", False, "no ptxas on PATH or in /usr/local/cuda",
                 "install the CUDA toolkit of the target's driver (JetPack: cuda-toolkit-12-6) to build the plugins "
                 "with phm-build-plugins --cuda-home")


def _plugin_library(plugins: Path | None) -> tuple[Check, Path | None, dict]:
    env = os.environ.get("PHM_PLUGINS")
    lib = Path(plugins or env or "build/phm_plugins")
    if lib.is_dir():
        lib = lib / PLUGIN_LIBRARY
    if not lib.is_file():
        return Check("plugin library", False, f"{lib} not found",
                     "phm-build-plugins --arch sm_87 --out DIR (then --plugins DIR or PHM_PLUGINS)"), None, {}
    info_path = lib.parent.parent / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    archs = ",".join(info.get("archs", [])) or "?"
    ptxas = {a: r.get("cuda") for a, r in info.get("toolchain", {}).items()}
    return Check("plugin library", True, f"{lib} (archs {archs}; ptxas {ptxas or '?'})"), lib, info


LOAD = """
import ctypes, sys
nvinfer, lib, how = sys.argv[1], sys.argv[2], sys.argv[3]
if how == "ctypes":                       # polygraphy --plugins: libnvinfer held privately, as TensorRT's bindings do
    if nvinfer:
        ctypes.CDLL(nvinfer, mode=ctypes.RTLD_LOCAL)
    ctypes.CDLL(lib)
else:                                     # trt.get_plugin_registry().load_library: engine builds, phm-run, --dynamicPlugins
    import tensorrt as trt
    registry = trt.get_plugin_registry()
    if not registry.load_library(lib):
        sys.exit("the registry refused the library")
    for name in ("PHMLinear", "PHMFFN"):
        if registry.get_creator(name, "1", "phm") is None:
            sys.exit(f"{name} is not registered after loading")
print("ok")
"""


def _loads(name: str, how: str, lib: Path, nvinfer: Path | None, fix: str) -> Check:
    run = subprocess.run([sys.executable, "-c", LOAD, str(nvinfer or ""), str(lib), how], capture_output=True,
                         text=True, timeout=120)
    if run.returncode == 0:
        return Check(name, True, "loads")
    reason = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    return Check(name, False, reason[:160], fix)


def _cubins(lib: Path, cuda, info: dict, driver: Check, arch: str) -> Check:
    """The driver loads every cubin of the GPU's arch `arch` ("sm_87"): the build's record first
    (archs, the ptxas that made them), then phm_kernels_prepare on a primary context."""
    fix = "rebuild with phm-build-plugins --cuda-home <the device's CUDA> --driver-cuda <its version>"
    built = info.get("archs")
    if built and arch not in built:
        return Check("driver accepts cubins", False, f"built for {', '.join(built)}, the GPU is {arch}",
                     f"phm-build-plugins --arch {arch}")
    need = info.get("toolchain", {}).get(arch, {}).get("min_driver_cuda")
    if need and parse_cuda_version(need) > parse_cuda_version(driver.detail):
        return Check("driver accepts cubins", False, f"cubins from ptxas {need}, driver CUDA {driver.detail}", fix)
    kernels = lib.parent / "libphm_kernels.so"
    ctx = ctypes.c_void_p()
    try:
        launcher = ctypes.CDLL(str(kernels))
    except OSError as e:
        return Check("driver accepts cubins", False, f"{kernels}: {str(e).splitlines()[0]}", fix)
    if cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) != 0 or cuda.cuCtxSetCurrent(ctx) != 0:
        return Check("driver accepts cubins", False, "no CUDA context on device 0", "check the driver install")
    launcher.phm_kernels_last_error.restype = ctypes.c_char_p
    if launcher.phm_kernels_prepare() != 0:
        return Check("driver accepts cubins", False, launcher.phm_kernels_last_error().decode()[:160], fix)
    return Check("driver accepts cubins", True, "every kernel of the GPU's arch loaded")


def diagnose(plugins: Path | None = None, tensorrt_lib: Path | None = None) -> list[Check]:
    """Every row of the table, in order; a row that cannot be checked (its prerequisite failed) says so."""
    trt_py = _tensorrt_python()
    nvinfer, nvinfer_path = _libnvinfer(tensorrt_lib)
    driver, gpu, cuda, arch = _driver()
    rows = [trt_py, nvinfer, driver, gpu, _toolkit()]
    library, lib, info = _plugin_library(plugins)
    rows.append(library)
    if lib is None:
        return rows + [Check(n, False, "no plugin library", library.fix)
                       for n in ("loads: polygraphy (ctypes)", "loads: TensorRT registry", "driver accepts cubins")]
    rows.append(_loads("loads: polygraphy (ctypes)", "ctypes", lib, nvinfer_path,
                       "rebuild with this phm-edge: the library must link libnvinfer (phm-build-plugins --tensorrt-lib)"))
    rows.append(_loads("loads: TensorRT registry", "registry", dynamic_library(lib), nvinfer_path,
                       "needs TensorRT's Python bindings and libphm_trt_plugins_dyn.so built for this TensorRT")
                if trt_py.ok else Check("loads: TensorRT registry", False, "no TensorRT Python", trt_py.fix))
    rows.append(_cubins(lib, cuda, info, driver, arch) if gpu.ok
                else Check("driver accepts cubins", False, "no GPU", gpu.fix))
    return rows


@click.command("phm-doctor", cls=OneLineCommand)
@click.option("--plugins", type=click.Path(path_type=Path), default=None,
              help="phm-build-plugins' --out dir or the .so [default: $PHM_PLUGINS, then build/phm_plugins]")
@click.option("--tensorrt-lib", type=click.Path(path_type=Path), default=None,
              help="libnvinfer.so.10 to check [default: the TensorRT install found as phm-build-plugins finds it]")
def main(plugins: Path | None, tensorrt_lib: Path | None) -> None:
    """Check that this machine can build, load and run the PHM TensorRT plugins."""
    rows = diagnose(plugins, tensorrt_lib)
    click.echo(table(rows))
    failed = [r for r in rows if not r.ok]
    for r in failed:
        click.echo(f"missing: {r.name}: {r.detail} → {r.fix}", err=True)
    if failed:
        raise SystemExit(1)


def table(rows: list[Check]) -> str:
    """The rows as an aligned text table (no dependency beyond click: the doctor runs on bare devices)."""
    cells = [("check", "status", "detail")] + [(r.name, "ok" if r.ok else "FAIL", r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in cells]
    return "\n".join([lines[0], "-" * max(len(ln) for ln in lines), *lines[1:]])


if __name__ == "__main__":
    main()
