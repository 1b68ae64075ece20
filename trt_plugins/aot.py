"""Ahead-of-time compilation of the Triton PHM kernels into cubins with a C launcher ABI, no GPU needed.

For every specialisation (family × arch × precision × n × tile config × alignment) this runs
`triton.compile` with an explicit `GPUTarget("cuda", sm, 32)` and writes, into `out_dir`:

    img_<symbol>.c          the cubin as a byte array + a `phm_kernel_image` descriptor
    phm_kernel_table.c      the table phm_runtime.c dispatches over, tile configs, T thresholds
    sources.cmake           PHM_GENERATED_SOURCES: the explicit list of the files above
    manifest.json           what was compiled: symbol, arch, PTX ISA, shared memory, params

The hand-written host code (kernels/csrc: phm_kernels.h, phm_runtime.c) loads the images with
cuLibraryLoadData and launches them; configs.py's selection rule is mirrored there and checked
by tests/trt_plugins/test_aot.py on the CPU through a fake driver.

Kernels are compiled in worker subprocesses whose environment lacks TRITON_INTERPRET, so this also
works from a process (such as the test suite) that runs the kernels under the interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from phm.trt_plugins.kernels import configs

log = logging.getLogger(__name__)

__all__ = ["CSRC_DIR", "KernelSpec", "all_specs", "compile_specs", "parse_archs", "write_sources"]

CSRC_DIR = Path(__file__).resolve().parent / "kernels" / "csrc"
FAMILIES = {"phm_linear": 0, "phm_gate_up": 1}           # = PHM_FAMILY_* in phm_kernels.h
PRECISIONS = (("fp32", "float"), ("fp16", "float"), ("fp16", "int8"), ("fp16", "int4"))
DTYPE_IDS = {"fp32": 0, "fp16": 1}                        # = phm_dtype
WFMT_IDS = {"float": 0, "int8": 1, "int4": 2}             # = phm_wfmt, phm_linear.WFMT_*
CONFIG_IDS = {"gemv": 0, "decode": 1, "prefill": 2, "prefill_mixw": 3}   # = PHM_CFG_*
SUPPORTED_ARCHS = (80, 86, 87, 89, 90)
# Triton releases whose compiled-kernel calling convention the C launcher (csrc/phm_runtime.c) was
# checked against: the kernel's own arguments, then two trailing scratch pointers (global, profile).
# Another release may add, drop or reorder launcher parameters; pyproject's `kernels` extra pins the same.
TRITON_CHECKED = ("3.9",)
SCRATCH_PARAMS = 2
# Integer arguments promised to be multiples of 16 in the aligned variant (phm_runtime.c checks).
ALIGNED_INTS = {"M", "K", "stride_xt", "stride_yt", "stride_ht"}


@dataclass(frozen=True)
class KernelSpec:
    family: str
    sm: int
    dtype: str
    wfmt: str
    n: int
    config: configs.TileConfig
    aligned: bool

    @property
    def symbol(self) -> str:
        return (f"{self.family}_sm{self.sm}_{self.dtype}_{self.wfmt}_n{self.n}_{self.config.name}_"
                f"{'a16' if self.aligned else 'any'}")


def parse_archs(text: str) -> list[int]:
    """'sm_87,sm_90' (or '87,90') → [87, 90]; ValueError naming anything unknown."""
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        m = re.fullmatch(r"(?:sm_?)?(\d+)a?", item)
        if not m or int(m.group(1)) not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown arch {item!r}; supported: "
                             + ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS))
        out.append(int(m.group(1)))
    if not out:
        raise ValueError("no arch given")
    return sorted(set(out))


def all_specs(archs, families=tuple(FAMILIES), precisions=PRECISIONS, ns=(2, 4),
              aligned=(False, True)) -> list[KernelSpec]:
    return [KernelSpec(f, sm, dt, wf, n, cfg, al)
            for sm in archs for f in families for dt, wf in precisions for n in ns
            for cfg in configs.configs_for(n) for al in aligned]


def _signature(kernel, spec: KernelSpec) -> tuple[dict, dict, dict]:
    xt = {"fp32": "fp32", "fp16": "fp16"}[spec.dtype]
    core_t = xt if spec.wfmt == "float" else "i8"
    ptr_types = {"x_ptr": xt, "y_ptr": xt, "h_ptr": xt, "bias_ptr": xt, "gate_bias_ptr": xt,
                 "up_bias_ptr": xt, "cores_ptr": core_t, "gate_ptr": core_t, "up_ptr": core_t,
                 "scales_ptr": "fp32", "gate_scales_ptr": "fp32", "up_scales_ptr": "fp32",
                 "bases_ptr": "fp32"}
    c = spec.config
    constexprs = {"N": spec.n, "WFMT": WFMT_IDS[spec.wfmt], "MIX_W": c.mix_w, "USE_DOT": c.use_dot,
                  "BLOCK_T": c.block_t, "BLOCK_M": c.block_m, "BLOCK_K": c.block_k}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + ptr_types[name]
            if spec.aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if spec.aligned and name in ALIGNED_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def check_triton(version: str | None = None) -> str:
    """The installed Triton's version when the C launcher's ABI was checked against it; ValueError in
    one line otherwise (before any kernel is compiled)."""
    if version is None:
        try:
            import triton
        except ImportError:
            raise ValueError('Triton is not installed: pip install "phm-edge[kernels]"') from None
        version = triton.__version__
    if ".".join(version.split(".")[:2]) not in TRITON_CHECKED:
        raise ValueError(f"Triton {version}: the PHM kernel launcher was checked against Triton "
                         f"{', '.join(v + '.x' for v in TRITON_CHECKED)} only (its kernels' trailing scratch "
                         f"parameters); install one: pip install 'triton=={TRITON_CHECKED[-1]}.*'")
    return version


def check_launch_abi(symbol: str, ptx_params: int, signature: dict) -> None:
    """A compiled kernel takes exactly its runtime arguments plus the scratch pointers the C launcher
    passes; anything else would launch with shifted arguments."""
    runtime_args = sum(1 for t in signature.values() if t != "constexpr")
    if ptx_params != runtime_args + SCRATCH_PARAMS:
        raise RuntimeError(f"{symbol}: the compiled kernel takes {ptx_params} parameters, the C launcher passes "
                           f"{runtime_args} arguments + {SCRATCH_PARAMS} scratch pointers (Triton ABI changed?)")


def _worker_init() -> None:
    os.environ.pop("TRITON_INTERPRET", None)   # compile real kernels even from an interpreter run
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _compile_one(spec: KernelSpec) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from phm.trt_plugins.kernels.phm_ffn import phm_gate_up_kernel
    from phm.trt_plugins.kernels.phm_linear import phm_linear_kernel

    kernel = {"phm_linear": phm_linear_kernel, "phm_gate_up": phm_gate_up_kernel}[spec.family]
    if not isinstance(kernel, triton.runtime.jit.JITFunction):
        raise RuntimeError("kernels were imported under TRITON_INTERPRET=1; cannot AOT-compile them")
    signature, constexprs, attrs = _signature(kernel, spec)
    target = GPUTarget("cuda", spec.sm, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": spec.config.num_warps,
                                     "num_stages": spec.config.num_stages,
                                     "enable_fp_fusion": True})
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    md = compiled.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise RuntimeError(f"{spec.symbol}: kernels needing global scratch cannot be AOT-launched")
    ptx = compiled.asm["ptx"]
    entry = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S)
    check_launch_abi(spec.symbol, entry.group(2).count(".param"), signature)
    ptx_target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    return {
        "symbol": spec.symbol, "entry": entry.group(1), "num_params": entry.group(2).count(".param"),
        "cubin": compiled.asm["cubin"], "shared": int(md.shared),
        "threads": int(md.num_warps) * 32,
        "ptx_version": re.search(r"^\.version\s+(\S+)", ptx, re.M).group(1),
        "ptx_target": ptx_target,
        **resource_usage(ptx, ptx_target, spec.sm),
    }


def resource_usage(ptx: str, target: str, sm: int) -> dict:
    """Registers, spill stores/loads and stack bytes per thread of one kernel: what `ptxas -v` reports
    when it assembles the PTX for `target` (the ptxas Triton used for sm_`sm`)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run([get_ptxas(sm).path, "-v", f"--gpu-name={target}", str(src), "-o", str(Path(d) / "k.o")],
                             capture_output=True, text=True).stderr

    def number(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "stack": number(r"(\d+) bytes stack frame")}


def _worker_main() -> None:
    """Subprocess entry: pickled list of KernelSpec on stdin → pickled results on stdout."""
    _worker_init()
    specs = pickle.load(sys.stdin.buffer)
    results = []
    for spec in specs:
        try:
            results.append(_compile_one(spec))
        except Exception as exc:  # reported with the spec's name by the parent
            results.append({"symbol": spec.symbol, "error": f"{type(exc).__name__}: {exc}"})
    pickle.dump(results, sys.stdout.buffer)


def _run_chunk(chunk: list[KernelSpec], toolchain_env: dict) -> list[dict]:
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **toolchain_env}
    proc = subprocess.run([sys.executable, "-c", "from phm.trt_plugins.aot import _worker_main; "
                           "_worker_main()"], input=pickle.dumps(chunk), capture_output=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError("Triton AOT worker failed: " + proc.stderr.decode(errors="replace")[-2000:])
    return pickle.loads(proc.stdout)


def compile_specs(specs: list[KernelSpec], jobs: int | None = None, toolchain=None) -> list[dict]:
    """Compile in `jobs` worker subprocesses (fresh interpreters: no TRITON_INTERPRET, no fork of
    the caller's state) with `toolchain`'s ptxas (toolchain.Toolchain; None: Triton's choice);
    results in the order of `specs`. RuntimeError names failed kernels."""
    if not specs:
        return []
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(specs)))
    chunks = [specs[i::jobs] for i in range(jobs)]
    env = toolchain.env() if toolchain is not None else {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        chunk_results = list(pool.map(lambda chunk: _run_chunk(chunk, env), chunks))
    by_symbol = {r["symbol"]: r for rs in chunk_results for r in rs}
    errors = [f"{sym}: {r['error']}" for sym, r in by_symbol.items() if "error" in r]
    if errors:
        raise RuntimeError("AOT compilation failed for " + "; ".join(errors[:5]))
    return [by_symbol[s.symbol] for s in specs]


def source_fingerprint(toolchain_key: str = "") -> str:
    """Hash of everything a cubin depends on: kernel sources, tile configs, Triton version and the
    ptxas of each arch (`toolchain_key`: toolchain.fingerprint)."""
    import hashlib

    import triton

    h = hashlib.sha256(triton.__version__.encode() + toolchain_key.encode())
    kdir = Path(__file__).resolve().parent / "kernels"
    for name in ("phm_linear.py", "phm_ffn.py", "configs.py"):
        h.update((kdir / name).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def cached_results(specs: list[KernelSpec], out_dir: Path, toolchain_key: str = "") -> bool:
    """True when out_dir already holds sources generated for exactly these specs from the current
    kernel sources by the same ptxas (phm-build-plugins then skips the compile)."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        return False
    return (data.get("fingerprint") == source_fingerprint(toolchain_key)
            and [k["symbol"] for k in data.get("kernels", [])] == [s.symbol for s in specs]
            and all((out_dir / f"img_{s.symbol}.c").is_file() for s in specs))


def _c_bytes(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), 24):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 24]) + ",")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    from phm.common.fsutil import atomic_write_text

    atomic_write_text(path, text)
    path.chmod(0o644)  # mkstemp makes files private; generated sources are ordinary files


def write_sources(specs: list[KernelSpec], results: list[dict], out_dir: Path, toolchain_key: str = "",
                  toolchain_report: dict | None = None) -> list[Path]:
    """Write img_*.c, phm_kernel_table.c, sources.cmake, manifest.json (with the toolchain's report:
    ptxas, CUDA and PTX ISA versions per arch); returns the .c files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files, entries, manifest = [], [], []
    for spec, res in zip(specs, results):
        sym = spec.symbol
        path = out_dir / f"img_{sym}.c"
        _write_atomic(path, (
            f"/* Generated by phm.trt_plugins.aot from the Triton kernel {spec.family}: do not edit.\n"
            f" * sm_{spec.sm} {spec.dtype} {spec.wfmt} n={spec.n} {spec.config} aligned={spec.aligned}\n"
            f" * PTX ISA {res['ptx_version']} ({res['ptx_target']}). */\n"
            f'#include "phm_kernel_table.h"\n\n'
            f"static const unsigned char cubin[{len(res['cubin'])}] __attribute__((aligned(16))) = {{\n"
            f"{_c_bytes(res['cubin'])}\n}};\n\n"
            f"const phm_kernel_image phm_img_{sym} = {{\"{sym}\", \"{res['entry']}\", cubin, sizeof cubin, "
            f"{res['shared']}, {res['threads']}, {res['num_params']}}};\n"))
        files.append(path)
        entries.append(f"    {{{FAMILIES[spec.family]}, {spec.sm}, {DTYPE_IDS[spec.dtype]}, "
                       f"{WFMT_IDS[spec.wfmt]}, {spec.n}, {CONFIG_IDS[spec.config.name]}, "
                       f"{int(spec.aligned)}, &phm_img_{sym}}},")
        manifest.append({**{k: v for k, v in res.items() if k != "cubin"},
                         "cubin_bytes": len(res["cubin"]), **{k: v for k, v in asdict(spec).items()
                                                               if k != "config"},
                         "config": asdict(spec.config)})
    tiles = sorted({(n, CONFIG_IDS[c.name], c.block_t, c.block_m, c.block_k)
                    for n in {s.n for s in specs} for c in configs.configs_for(n)})
    decls = "\n".join(f"extern const phm_kernel_image phm_img_{s.symbol};" for s in specs)
    table = (
        "/* Generated by phm.trt_plugins.aot: do not edit. */\n"
        '#include "phm_kernel_table.h"\n\n'
        f"{decls}\n\n"
        "const phm_kernel_entry phm_kernel_table[] = {\n" + "\n".join(entries) + "\n};\n"
        f"const int phm_kernel_table_size = {len(entries)};\n\n"
        "const phm_tile_config phm_tile_configs[] = {\n"
        + "\n".join(f"    {{{n}, {c}, {bt}, {bm}, {bk}}}," for n, c, bt, bm, bk in tiles)
        + f"\n}};\nconst int phm_tile_configs_size = {len(tiles)};\n"
        f"const int phm_gemv_max_t = {configs.GEMV_MAX_T};\n"
        f"const int phm_decode_max_t = {configs.DECODE_MAX_T};\n")
    table_path = out_dir / "phm_kernel_table.c"
    _write_atomic(table_path, table)
    files.append(table_path)
    _write_atomic(out_dir / "sources.cmake", "set(PHM_GENERATED_SOURCES\n"
                  + "\n".join(f"    ${{CMAKE_CURRENT_LIST_DIR}}/{p.name}" for p in files) + "\n)\n")
    _write_atomic(out_dir / "manifest.json", json.dumps(
        {"format_version": 1, "fingerprint": source_fingerprint(toolchain_key), "toolchain": toolchain_report or {},
         "kernels": manifest}, indent=1))
    return files
