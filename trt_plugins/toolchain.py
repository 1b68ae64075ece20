"""Which ptxas assembles each arch's cubins, its CUDA and PTX ISA versions, and whether a target's
driver can load what it makes.

Triton assembles sm < 90 with `TRITON_PTXAS_PATH` (default: its bundled ptxas, CUDA 12.9 with
Triton 3.9) and sm ≥ 90 with `TRITON_PTXAS_BLACKWELL_PATH` (default: its bundled ptxas-blackwell,
CUDA 13.x), and emits the newest PTX ISA that ptxas takes. A cubin loads only on a driver at least
as new as the ptxas that made it: JetPack 6 (CUDA 12.6 driver) refuses the bundled 12.9 ptxas's
sm_87 cubins. `Toolchain(cuda_home)` points both variables at that toolkit's own ptxas (on the
Jetson: /usr/local/cuda-12.6), and `check_driver` refuses, before any compile, a build whose
cubins a named driver version cannot load.

    tc = Toolchain(Path("/usr/local/cuda-12.6"))
    report = tc.report([87])        # {"sm_87": {"ptxas": …, "cuda": "12.6", "ptx_isa": "8.5", …}}
    check_driver(report, "12.6")    # ValueError (one line) where a cubin needs a newer driver
    env = tc.env()                  # TRITON_PTXAS_PATH / TRITON_PTXAS_BLACKWELL_PATH for the workers
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Toolchain", "check_driver", "fingerprint", "parse_cuda_version", "ptx_isa", "ptxas_version"]

ENV = {False: "TRITON_PTXAS_PATH", True: "TRITON_PTXAS_BLACKWELL_PATH"}    # keyed by arch >= 90
BUNDLED = {False: "ptxas", True: "ptxas-blackwell"}


def parse_cuda_version(text: str) -> tuple[int, int]:
    """"12.6" → (12, 6); ValueError in one line otherwise."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"a CUDA version is MAJOR.MINOR (e.g. 12.6), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def ptx_isa(cuda: str) -> str:
    """The PTX ISA Triton emits for a ptxas of CUDA `cuda` (triton.backends.nvidia.compiler.ptx_get_version)."""
    major, minor = parse_cuda_version(cuda)
    if major >= 13:
        v = 90 + (major - 13) * 10 + minor
    elif major == 12:
        v = 80 + minor - (1 if minor >= 6 else 0)
    elif major == 11:
        v = 70 + minor
    else:
        raise ValueError(f"CUDA {cuda}: Triton needs a CUDA 11 or newer ptxas")
    return f"{v // 10}.{v % 10}"


@lru_cache
def ptxas_version(path: str) -> str | None:
    """The CUDA release of the ptxas at `path` ("12.6"), or None where it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _bundled_dir() -> Path | None:
    found = importlib.util.find_spec("triton")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(found.submodule_search_locations[0]) / "backends" / "nvidia" / "bin"


@dataclass(frozen=True)
class Toolchain:
    """The ptxas of every arch: `cuda_home`'s bin/ptxas for all of them, else what Triton picks."""

    cuda_home: Path | None = None

    def ptxas(self, arch: int) -> tuple[str, str]:
        """(path, CUDA version) of the ptxas that assembles sm_`arch`; ValueError in one line where
        there is none that runs."""
        if self.cuda_home is not None:
            path = Path(self.cuda_home) / "bin" / "ptxas"
            what = f"--cuda-home {self.cuda_home}"
        else:
            blackwell = arch >= 90
            path = os.environ.get(ENV[blackwell]) or ((_bundled_dir() or Path(".")) / BUNDLED[blackwell])
            what = f"${ENV[blackwell]}" if os.environ.get(ENV[blackwell]) else "Triton's bundled ptxas"
        version = ptxas_version(str(path))
        if version is None:
            raise ValueError(f"{what}: no runnable ptxas at {path} (`ptxas --version` failed)")
        return str(path), version

    def env(self) -> dict:
        """The environment that makes Triton's workers use this toolchain."""
        if self.cuda_home is None:
            return {}
        ptxas = str(Path(self.cuda_home) / "bin" / "ptxas")
        return {ENV[False]: ptxas, ENV[True]: ptxas}

    def report(self, archs: list[int]) -> dict:
        """Per arch: the ptxas, its CUDA version, the PTX ISA of the PTX it assembles, and the oldest
        driver CUDA version that loads the cubins (the ptxas's own)."""
        out = {}
        for arch in archs:
            path, cuda = self.ptxas(arch)
            out[f"sm_{arch}"] = {"ptxas": path, "cuda": cuda, "ptx_isa": ptx_isa(cuda), "min_driver_cuda": cuda}
        return out



def fingerprint(report: dict) -> str:
    """What of a toolchain (its `report`) a cached cubin depends on: the ptxas of each arch."""
    return json.dumps({a: (r["ptxas"], r["cuda"]) for a, r in report.items()}, sort_keys=True)


def check_driver(report: dict, driver_cuda: str) -> None:
    """ValueError (one line) for the first arch whose cubins a driver of CUDA `driver_cuda` cannot load."""
    driver = parse_cuda_version(driver_cuda)
    for arch, r in report.items():
        if parse_cuda_version(r["cuda"]) > driver:
            raise ValueError(f"{arch} cubins would be assembled by ptxas {r['cuda']}, which a CUDA {driver_cuda} "
                             f"driver cannot load: build with the target's own toolkit, e.g. "
                             f"--cuda-home /usr/local/cuda-{driver_cuda}")
