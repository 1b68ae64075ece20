"""The fault suite's subprocess runner and helpers (the session inputs are built in conftest.py).

Every CLI runs as a real subprocess through its installed entry point (what a user types), so
exit codes, stderr and tracebacks are the process's own, and an OS-level fault (RLIMIT_FSIZE:
writes beyond N bytes fail with EFBIG, as on a full disk) hits the real write path.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's console scripts: phm-train, phm-export, phm-run, phm-build-plugins


def cli(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: install the project (make setup) before running tests/faults")
    return str(path)


def env() -> dict:
    """The child's environment: quiet, CPU-only, no network, one thread each (cases run side by side)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}


def file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, so it is an error,
    not a kill), the same failure path as a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(argv: list, fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env(), timeout=timeout,
                          preexec_fn=file_size_limit(fsize) if fsize else None)


ZYGOTE = Path(__file__).with_name("zygote.py")


def run_many(cases: dict, logs: Path, timeout: float = 600) -> dict:
    """{id: (argv with the console-script name first, fsize)} -> {id: CompletedProcess}, each case a
    process of its own forked by zygote.py (one interpreter start for all of them)."""
    lines = []
    for name, (argv, fsize) in cases.items():
        lines.append(json.dumps({"id": name, "argv": [str(a) for a in argv], "fsize": fsize,
                                 "stdout": str(logs / f"{name}.out"), "stderr": str(logs / f"{name}.err")}))
    proc = subprocess.run([sys.executable, str(ZYGOTE)], input="\n".join(lines), capture_output=True, text=True,
                          env=env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"zygote failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        name, (argv, _) = r["id"], cases[r["id"]]
        out[name] = subprocess.CompletedProcess([str(a) for a in argv], r["rc"], (logs / f"{name}.out").read_text(),
                                                (logs / f"{name}.err").read_text())
    missing = set(cases) - set(out)
    if missing:
        raise RuntimeError(f"zygote returned no result for {sorted(missing)}")
    return out


def snapshot(root: Path) -> dict:
    """{relative path: sha256 (files) or "dir"} of everything under root, hidden entries included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
