"""`phm-build-plugins`: AOT-compile every PHM kernel specialisation, then build the libraries.

    out/generated/   cubins as C + dispatch table + manifest.json     (always)
    out/lib/libphm_kernels.so                                        (always: C launcher ABI)
    out/lib/libphm_trt_plugins.so, libphm_trt_plugins_dyn.so          (where TensorRT headers and
                                                                      libnvinfer.so.10 exist)
    out/build_info.json                                              what was built and skipped
    out/resource_usage.md                                            per kernel: registers, spills, stack,
                                                                     shared memory (ptxas -v)

TensorRT headers are looked up in --tensorrt-root / $TENSORRT_ROOT, then the standard install
paths (Debian/JetPack: /usr/include/<triple>); libnvinfer.so.10, which the plugin libraries link
(so that every way of loading them resolves the plugin registry), in --tensorrt-lib, the root's
lib dirs, the `tensorrt_libs` wheel and the system lib dirs. Without them the launcher library is
still built and the skip is reported. See trt_plugins/README.md for JetPack 6 (ptxas / PTX ISA versus the driver).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from phm.common.cliutil import OneLineCommand
from phm.common.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, check_apart, output_lock
from phm.trt_plugins import aot
from phm.trt_plugins.toolchain import Toolchain, check_driver, fingerprint, parse_cuda_version

log = logging.getLogger(__name__)

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
TRT_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/tensorrt/lib", "/opt/tensorrt/lib")
TRT_HEADER_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                   "/usr/local/tensorrt/include", "/opt/tensorrt/include")


class BuildError(RuntimeError):
    """A known build failure, reported as one line by the CLI."""


@dataclass
class BuildConfig:
    archs: list[int]
    out_dir: Path
    tensorrt_root: Path | None = None
    jobs: int | None = None
    tensorrt_lib: Path | None = None  # libnvinfer.so.10 (or its dir) to link the plugin libraries
    cuda_home: Path | None = None     # the target's CUDA toolkit: its bin/ptxas assembles every arch
    driver_cuda: str | None = None    # the target driver's CUDA version (JetPack 6: 12.6): refuse what it cannot load
    cmake: str = "cmake"

    def __post_init__(self):
        if not self.archs:
            raise ValueError("no target architecture")
        self.out_dir = Path(self.out_dir)


@dataclass
class BuildResult:
    kernels: int
    generated_dir: Path
    libraries: list[Path] = field(default_factory=list)
    tensorrt_include: Path | None = None
    tensorrt_version: str | None = None
    tensorrt_library: Path | None = None
    toolchain: dict = field(default_factory=dict)  # per arch: ptxas, CUDA, PTX ISA, oldest driver
    skipped: list[str] = field(default_factory=list)


def find_tensorrt_include(root: Path | None) -> Path | None:
    """Directory holding NvInfer.h + NvInferVersion.h, or None."""
    candidates = []
    for r in (root, os.environ.get("TENSORRT_ROOT")):
        if r:
            candidates += [Path(r), Path(r) / "include"]
    candidates += [Path(p) for p in TRT_HEADER_DIRS]
    for c in candidates:
        if (c / "NvInfer.h").is_file() and (c / "NvInferVersion.h").is_file():
            return c
    return None


def _wheel_lib_dir() -> Path | None:
    """site-packages/tensorrt_libs of the TensorRT pip wheel, without importing it."""
    import importlib.util

    found = importlib.util.find_spec("tensorrt_libs")
    return Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else None


def find_nvinfer(lib: Path | None, root: Path | None) -> Path | None:
    """libnvinfer.so.10 (or libnvinfer.so) to link: `lib` (a file or a dir), then the TensorRT root's lib
    dirs, the tensorrt_libs wheel, the system lib dirs; None where there is none (headers only)."""
    if lib is not None and Path(lib).is_file():
        return Path(lib)
    dirs = [Path(lib)] if lib is not None else []
    for r in (root, os.environ.get("TENSORRT_ROOT")):
        if r:
            dirs += [Path(r) / d for d in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu")]
    dirs += [d for d in [_wheel_lib_dir()] if d] + [Path(d) for d in TRT_LIB_DIRS]
    for d in dirs:
        for name in ("libnvinfer.so.10", "libnvinfer.so"):
            if (d / name).is_file():
                return d / name
    return None


def cmake_configure_args(gen: Path, include: Path | None, nvinfer: Path | None) -> list[str]:
    """The -D options of the plugin CMake project: generated kernels, TensorRT headers and libnvinfer
    (both NOTFOUND where absent: the launcher library alone is built then)."""
    return [f"-DPHM_GENERATED_DIR={gen}", "-DCMAKE_BUILD_TYPE=Release",
            f"-DTENSORRT_ROOT={include.parent if include else ''}",
            f"-DTENSORRT_INCLUDE_DIR={include if include else 'TENSORRT_INCLUDE_DIR-NOTFOUND'}",
            f"-DTENSORRT_NVINFER_LIBRARY={nvinfer if nvinfer else 'TENSORRT_NVINFER_LIBRARY-NOTFOUND'}"]


def tensorrt_version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text(errors="replace")
    nums = {}
    for key in ("MAJOR", "MINOR", "PATCH"):
        m = (re.search(rf"#define NV_TENSORRT_{key} (\d+)", text)
             or re.search(rf"#define TRT_{key}_ENTERPRISE (\d+)", text))
        nums[key] = m.group(1) if m else "?"
    return f"{nums['MAJOR']}.{nums['MINOR']}.{nums['PATCH']}"


def _run(cmd: list[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise BuildError(f"{what} failed:\n" + "\n".join(tail))


def write_generated(specs: list, results: list[dict], gen: Path, toolchain_key: str = "",
                    toolchain_report: dict | None = None) -> None:
    """generated/ as one atomic dir swap: a failed write (disk full, read-only) leaves the previous
    complete sources, never a mix or a `.c.tmp`."""
    with atomic_dir(gen, overwrite=True) as tmp:
        aot.write_sources(specs, results, tmp, toolchain_key, toolchain_report)
        tmp.chmod(0o755)


def build_plugins(cfg: BuildConfig) -> BuildResult:
    """AOT-compile all kernels for cfg.archs, then CMake-build the launcher (+ plugin) libraries.

    The output dir lies apart from the sources it is built from and has one writer at a time;
    generated/ is swapped in whole and every library file is renamed into place, so an interrupted
    or failed build (disk full, read-only) leaves the previous complete files, never half-written ones."""
    check_apart(cfg.out_dir, {"plugin sources": PLUGINS_DIR, "kernel sources": aot.CSRC_DIR.parent,
                              "TensorRT root": cfg.tensorrt_root})
    with output_lock(cfg.out_dir):
        return _build_plugins(cfg)


def resource_table(kernels: list[dict]) -> str:
    """Markdown table of the kernels' resource usage (generated/manifest.json's entries)."""
    lines = ["| kernel | registers | spill stores / loads (bytes) | stack (bytes) | shared (bytes) | threads |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in kernels:
        lines.append(f"| {k['symbol']} | {k.get('registers', '?')} | {k.get('spill_stores', '?')} / "
                     f"{k.get('spill_loads', '?')} | {k.get('stack', '?')} | {k['shared']} | {k['threads']} |")
    return "\n".join(lines) + "\n"


def _report_resources(gen: Path, out_dir: Path) -> None:
    """out/resource_usage.md from generated/manifest.json, and the spilling kernels in the log."""
    kernels = json.loads((gen / "manifest.json").read_text())["kernels"]
    atomic_write_text(out_dir / "resource_usage.md", "# PHM kernels: resource usage (ptxas -v)\n\n"
                      + resource_table(kernels)).chmod(0o644)
    spilling = [k["symbol"] for k in kernels if k.get("spill_stores") or k.get("spill_loads")]
    log.info("resource usage: %d kernels, %d spill registers%s (%s)", len(kernels), len(spilling),
             f": {', '.join(spilling[:5])}{' …' if len(spilling) > 5 else ''}" if spilling else "",
             out_dir / "resource_usage.md")


def _build_plugins(cfg: BuildConfig) -> BuildResult:
    aot.check_triton()
    toolchain = Toolchain(cfg.cuda_home)
    report = toolchain.report(cfg.archs)  # ValueError where a ptxas does not run
    if cfg.driver_cuda is not None:
        check_driver(report, cfg.driver_cuda)  # before any compile
    for arch, r in report.items():
        log.info("%s: ptxas %s (%s), PTX ISA %s; loads on CUDA ≥ %s drivers", arch, r["cuda"], r["ptxas"],
                 r["ptx_isa"], r["min_driver_cuda"])
    specs = aot.all_specs(cfg.archs)
    gen = cfg.out_dir / "generated"
    key = fingerprint(report)
    if aot.cached_results(specs, gen, key):
        log.info("reusing %d kernels in %s (kernel sources and ptxas unchanged)", len(specs), gen)
    else:
        log.info("compiling %d kernel specialisations for %s", len(specs),
                 ", ".join(f"sm_{a}" for a in cfg.archs))
        write_generated(specs, aot.compile_specs(specs, cfg.jobs, toolchain), gen, key, report)
    result = BuildResult(kernels=len(specs), generated_dir=gen, toolchain=report)
    _report_resources(gen, cfg.out_dir)

    cmake = shutil.which(cfg.cmake)
    if cmake is None:
        raise BuildError(f"{cfg.cmake!r} not found: install CMake ≥ 3.18 (pip install cmake) to build "
                         f"the libraries; the generated sources are in {gen}")
    include = find_tensorrt_include(cfg.tensorrt_root)
    nvinfer = find_nvinfer(cfg.tensorrt_lib, cfg.tensorrt_root) if include is not None else None
    if include is None:
        result.skipped.append("TensorRT plugin libraries: no NvInfer.h under --tensorrt-root, "
                              "$TENSORRT_ROOT or " + ", ".join(TRT_HEADER_DIRS))
    elif nvinfer is None:
        include = None  # the plugin libraries must link libnvinfer: without it, the launcher alone
        result.skipped.append("TensorRT plugin libraries: TensorRT headers found but no libnvinfer.so.10 to "
                              "link (--tensorrt-lib, the root's lib/, the tensorrt_libs wheel, "
                              + ", ".join(TRT_LIB_DIRS) + ")")
    if include is not None:
        result.tensorrt_include, result.tensorrt_version = include, tensorrt_version(include)
        result.tensorrt_library = nvinfer
    build_dir = cfg.out_dir / "build"
    configure = [cmake, "-S", str(PLUGINS_DIR), "-B", str(build_dir), *cmake_configure_args(gen, include, nvinfer)]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"] if not (build_dir / "CMakeCache.txt").exists() else []
    _run(configure, "cmake configure")
    _run([cmake, "--build", str(build_dir), "--parallel", str(cfg.jobs or os.cpu_count() or 1)],
         "cmake build")
    lib_dir = cfg.out_dir / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    names = ["libphm_kernels.so"] + (["libphm_trt_plugins.so", "libphm_trt_plugins_dyn.so"]
                                     if include is not None else [])
    for name in names:
        src = build_dir / name
        if not src.is_file():
            raise BuildError(f"cmake build did not produce {name}")
        atomic_write_bytes(lib_dir / name, src.read_bytes()).chmod(0o755)
        result.libraries.append(lib_dir / name)
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    info["libraries"] = [str(p) for p in result.libraries]
    info.update(format_version=1, archs=[f"sm_{a}" for a in cfg.archs], host=platform.machine(),
                driver_cuda=cfg.driver_cuda)
    atomic_write_text(cfg.out_dir / "build_info.json", json.dumps(info, indent=1)).chmod(0o644)
    return result


@click.command("phm-build-plugins", cls=OneLineCommand)
@click.option("--arch", "arch", default="sm_87,sm_90", show_default=True,
              help="comma-separated GPU targets (sm_80, sm_86, sm_87 = Jetson Orin, sm_89, sm_90)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("build/phm_plugins"), show_default=True, help="output directory")
@click.option("--tensorrt-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="TensorRT headers root (default: $TENSORRT_ROOT, then standard paths)")
@click.option("--tensorrt-lib", type=click.Path(exists=True, path_type=Path), default=None,
              help="libnvinfer.so.10 (or its dir) the plugin libraries link (default: the TensorRT root's lib/, "
                   "the tensorrt_libs wheel, the system lib dirs)")
@click.option("--cuda-home", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="the target's CUDA toolkit: its bin/ptxas assembles every arch (on the Jetson: "
                   "/usr/local/cuda-12.6) [default: Triton's bundled ptxas, CUDA 12.9 / 13.x]")
@click.option("--driver-cuda", default=None, metavar="X.Y",
              help="CUDA version of the target's driver (JetPack 6: 12.6): refuse cubins it cannot load")
@click.option("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: all CPUs)")
def main(arch: str, out_dir: Path, tensorrt_root: Path | None, tensorrt_lib: Path | None, cuda_home: Path | None,
         driver_cuda: str | None, jobs: int | None) -> None:
    """AOT-compile the PHM Triton kernels to cubins + C launchers and build the TensorRT plugins."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if driver_cuda is not None:
            parse_cuda_version(driver_cuda)
        cfg = BuildConfig(aot.parse_archs(arch), out_dir, tensorrt_root, jobs, tensorrt_lib=tensorrt_lib,
                          cuda_home=cuda_home, driver_cuda=driver_cuda)
        res = build_plugins(cfg)
    except (ValueError, BuildError, RuntimeError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as e:  # disk full, read-only: generated/ and lib/ keep their previous complete files
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"I/O error while building into {out_dir}: {e.strerror or e}{where}") from None
    log.info("%d kernels → %s", res.kernels, res.generated_dir)
    for lib in res.libraries:
        log.info("built %s", lib)
    if res.tensorrt_version:
        log.info("TensorRT headers %s (%s), linked against %s", res.tensorrt_version, res.tensorrt_include,
                 res.tensorrt_library)
    for s in res.skipped:
        log.warning("skipped: %s", s)
