"""AOT: Triton kernels compile to sm_87 / sm_90 cubins on this CPU machine; the generated C and the
hand-written launcher runtime compile against the CUDA headers; the C dispatcher picks the same
specialisation and grid as configs.select (checked through a fake driver, no GPU needed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from phm.trt_plugins import aot
from phm.trt_plugins.kernels import configs

HERE = Path(__file__).resolve().parent
CUDA_INCLUDE = next((p for p in (Path("/usr/local/cuda/include"),) if (p / "cuda.h").exists()), None)
needs_cc = pytest.mark.skipif(shutil.which("gcc") is None or CUDA_INCLUDE is None,
                              reason="needs gcc and the CUDA headers (cuda.h)")


def cc(*args, cwd=None):
    proc = subprocess.run(["gcc", "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC",
                           f"-I{CUDA_INCLUDE}", f"-I{aot.CSRC_DIR}", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_parse_archs():
    assert aot.parse_archs("sm_87,sm_90") == [87, 90]
    assert aot.parse_archs("90, 87,sm_90a") == [87, 90]
    for bad in ("sm_75", "hopper", ""):
        with pytest.raises(ValueError):
            aot.parse_archs(bad)


def test_spec_symbols_unique():
    specs = aot.all_specs([87, 90])
    assert len({s.symbol for s in specs}) == len(specs) == 2 * 2 * 4 * (4 + 4) * 2


@needs_cc
def test_compile_subset_for_orin_and_hopper(tmp_path):
    picks = [("phm_linear", "fp16", "int4", 2, "gemv", True),
             ("phm_linear", "fp32", "float", 4, "prefill_mixw", False),
             ("phm_gate_up", "fp16", "int8", 2, "decode", True),
             ("phm_gate_up", "fp16", "float", 2, "prefill", False)]
    specs = []
    for sm in (87, 90):
        for fam, dt, wf, n, cfg, al in picks:
            c = {c.name: c for c in configs.configs_for(n)}[cfg]
            specs.append(aot.KernelSpec(fam, sm, dt, wf, n, c, al))
    results = aot.compile_specs(specs, jobs=2)
    for spec, res in zip(specs, results):
        assert res["cubin"][:4] == b"\x7fELF", spec.symbol
        assert res["ptx_target"].startswith(f"sm_{spec.sm}")
        assert res["num_params"] == (17 if spec.family == "phm_linear" else 20)  # + 2 scratch
        assert res["threads"] == spec.config.num_warps * 32
    files = aot.write_sources(specs, results, tmp_path / "gen")
    objs = []
    for f in [*files, aot.CSRC_DIR / "phm_runtime.c"]:
        obj = tmp_path / (f.stem + ".o")
        cc("-c", f, "-o", obj)
        objs.append(obj)
    lib = tmp_path / "libphm_kernels.so"
    cc("-shared", *objs, "-o", lib, "-ldl", "-lpthread")
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert "phm_linear_launch" in nm and "phm_gate_up_launch" in nm
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
    assert " cu" not in undefined, "the launcher library must not link the driver (dlopen)"


@needs_cc
def test_c_dispatch_matches_python(tmp_path):
    """Every spec in a table of fake images; the C runtime must pick what configs.select picks."""
    specs = aot.all_specs([87, 90])
    fake = [{"symbol": s.symbol, "entry": "k", "cubin": b"\x7fELF" + s.symbol.encode(), "shared": 1024,
             "threads": s.config.num_warps * 32, "num_params": 17 if s.family == "phm_linear" else 20,
             "ptx_version": "-", "ptx_target": "-"} for s in specs]
    files = aot.write_sources(specs, fake, tmp_path / "gen")
    exe = tmp_path / "harness"
    cc(HERE / "dispatch_harness.c", aot.CSRC_DIR / "phm_runtime.c", *files, "-o", exe, "-ldl", "-lpthread")
    fam_ids = {"phm_linear": 0, "phm_gate_up": 1}
    queries, expected = [], []
    for fam in fam_ids:
        for sm in (87, 90):
            for dt, wf in aot.PRECISIONS:
                for n in (2, 4):
                    for nb in sorted({1, n, n + 1, n * n}):
                        for t in (1, 2, 16, 17, 300):
                            for rows, k, al in ((48, 32, 1), (48, 32, 0), (19, 37, 1)):
                                if wf == "int4" and k % 2:
                                    continue
                                group = (16 if k % 16 == 0 else 2) if wf == "int4" else 1
                                queries.append(f"{fam_ids[fam]} {sm} {aot.DTYPE_IDS[dt]} "
                                               f"{aot.WFMT_IDS[wf]} {n} {t} {rows} {k} {nb} {group} {al}")
                                cfg = configs.select(t, n, nb)
                                aligned = bool(al and rows % 16 == 0 and k % 16 == 0)
                                sym = aot.KernelSpec(fam, sm, dt, wf, n, cfg, aligned).symbol
                                grid = -(-t // cfg.block_t) * -(-rows // cfg.block_m)
                                g = group if wf == "int4" else 1
                                ints = [t, rows, k, nb, g, n * k, n * rows, 1, 1]
                                expected.append(f"0 {sym} {grid} {cfg.num_warps * 32} 1024 "
                                                f"{17 if fam == 'phm_linear' else 20} "
                                                + " ".join(map(str, ints)))
    queries.append("0 89 1 0 2 1 48 32 2 1 1")   # no cubin for sm_89 in this table
    queries.append("0 90 1 2 2 1 48 32 2 6 1")   # int4 group 6 does not divide k = 32
    out = subprocess.run([str(exe)], input="\n".join(queries) + "\n", capture_output=True,
                         text=True, timeout=60).stdout.splitlines()
    assert len(out) == len(queries)
    assert out[:-2] == expected
    assert out[-2].startswith("209 ") and "sm_89" in out[-2]       # CUDA_ERROR_NO_BINARY_FOR_GPU
    assert out[-1].startswith("1 ") and "group_size" in out[-1]    # CUDA_ERROR_INVALID_VALUE


@needs_cc
def test_cuda_home_ptxas_assembles_the_cubins(tmp_path):
    """--cuda-home's ptxas really assembles the kernels: the PTX ISA follows that toolkit (CUDA 13.0
    here: 9.0) instead of Triton's bundled ptxas (12.9 for sm_87: 8.8)."""
    from phm.trt_plugins.toolchain import Toolchain, ptx_isa

    home = Path("/usr/local/cuda")
    if not (home / "bin" / "ptxas").exists():
        pytest.skip("needs a CUDA toolkit at /usr/local/cuda")
    tc = Toolchain(home)
    cuda = tc.report([87])["sm_87"]["cuda"]
    c = configs.configs_for(2)[0]
    spec = aot.KernelSpec("phm_linear", 87, "fp16", "float", 2, c, True)
    res = aot.compile_specs([spec], jobs=1, toolchain=tc)[0]
    assert res["cubin"][:4] == b"\x7fELF" and res["ptx_version"] == ptx_isa(cuda)
    assert aot.compile_specs([spec], jobs=1)[0]["ptx_version"] == ptx_isa(Toolchain().report([87])["sm_87"]["cuda"])


@needs_cc
def test_gemv_and_decode_kernels_do_not_spill_on_orin():
    """Every gemv and decode specialisation for sm_87 (the weight-streaming kernels of a decode step)
    assembles without register spills; the resource report's numbers come from ptxas -v."""
    from phm.trt_plugins.build import resource_table

    specs = [s for s in aot.all_specs([87]) if s.config.name in ("gemv", "decode")]
    results = aot.compile_specs(specs, jobs=2)
    spilling = [(s.symbol, r["spill_stores"], r["spill_loads"]) for s, r in zip(specs, results)
                if r["spill_stores"] or r["spill_loads"]]
    assert not spilling
    assert all(0 < r["registers"] <= 255 for r in results)
    table = resource_table([{k: v for k, v in r.items() if k != "cubin"} for r in results])
    assert len(table.splitlines()) == 2 + len(specs) and specs[0].symbol in table
