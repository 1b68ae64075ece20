"""phm-build-plugins: known bad input gives one line and a non-zero exit (no traceback); header
discovery and the AOT cache behave."""

import json

from click.testing import CliRunner

from phm.trt_plugins import aot
from phm.trt_plugins.build import find_tensorrt_include, main, tensorrt_version


def test_unknown_arch_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["--arch", "sm_75,sm_90", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "unknown arch 'sm_75'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_find_tensorrt_include(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "NvInfer.h").write_text("")
    (inc / "NvInferVersion.h").write_text("#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n"
                                          "#define TRT_PATCH_ENTERPRISE 0\n")
    assert find_tensorrt_include(tmp_path) == inc
    assert tensorrt_version(inc) == "11.1.0"
    monkeypatch.setenv("TENSORRT_ROOT", str(tmp_path))
    assert find_tensorrt_include(None) == inc


def test_aot_cache_requires_same_sources_and_specs(tmp_path):
    specs = aot.all_specs([87])[:2]
    for s in specs:
        (tmp_path / f"img_{s.symbol}.c").write_text("")
    manifest = {"fingerprint": aot.source_fingerprint(), "kernels": [{"symbol": s.symbol} for s in specs]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert aot.cached_results(specs, tmp_path)
    assert not aot.cached_results(specs[:1], tmp_path)
    manifest["fingerprint"] = "stale"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not aot.cached_results(specs, tmp_path)


def test_triton_outside_the_checked_range_is_refused_before_any_work(tmp_path, monkeypatch):
    """The C launcher passes Triton 3.9's trailing scratch pointers: another release is one line, and
    nothing is compiled or written."""
    import pytest
    import triton

    assert aot.check_triton() == triton.__version__  # the installed (CI-pinned) release is a checked one
    for version in ("3.8.0", "3.10.0", "4.0.0"):
        with pytest.raises(ValueError, match=f"Triton {version}: .*checked against Triton 3.9.x only"):
            aot.check_triton(version)
    monkeypatch.setattr(triton, "__version__", "3.10.0")
    res = CliRunner().invoke(main, ["--arch", "sm_87", "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "Triton 3.10.0" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "generated").exists()


def test_kernel_parameters_must_match_the_launcher():
    import pytest

    signature = {"x_ptr": "*fp16", "y_ptr": "*fp16", "M": "i32", "N": "constexpr", "BLOCK_M": "constexpr"}
    aot.check_launch_abi("k", 3 + aot.SCRATCH_PARAMS, signature)  # 3 runtime args + the scratch pointers
    for wrong in (3, 3 + aot.SCRATCH_PARAMS + 1):
        with pytest.raises(RuntimeError, match="k: the compiled kernel takes"):
            aot.check_launch_abi("k", wrong, signature)


def _fake_cuda_home(root, release: str):
    """A CUDA toolkit dir whose bin/ptxas reports `release` (what --cuda-home reads before compiling)."""
    ptxas = root / "bin" / "ptxas"
    ptxas.parent.mkdir(parents=True)
    ptxas.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
    ptxas.chmod(0o755)
    return root


def test_toolchain_report_per_arch(tmp_path, monkeypatch):
    """Triton's own choice differs per arch (ptxas below sm_90, ptxas-blackwell from sm_90 on); a
    --cuda-home toolkit assembles every arch, and its PTX ISA follows Triton's rule."""
    from phm.trt_plugins.toolchain import Toolchain, fingerprint, ptx_isa

    for var in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
        monkeypatch.delenv(var, raising=False)
    bundled = Toolchain().report([87, 90])
    assert bundled["sm_87"]["ptxas"].endswith("/ptxas") and bundled["sm_90"]["ptxas"].endswith("/ptxas-blackwell")
    for r in bundled.values():
        assert r["ptx_isa"] == ptx_isa(r["cuda"]) and r["min_driver_cuda"] == r["cuda"]
    assert (ptx_isa("12.6"), ptx_isa("12.9"), ptx_isa("13.0"), ptx_isa("12.4")) == ("8.5", "8.8", "9.0", "8.4")
    home = _fake_cuda_home(tmp_path / "cuda-12.6", "12.6")
    tc = Toolchain(home)
    report = tc.report([87, 90])
    assert {r["cuda"] for r in report.values()} == {"12.6"} and report["sm_90"]["ptx_isa"] == "8.5"
    assert set(tc.env().values()) == {str(home / "bin" / "ptxas")}
    assert fingerprint(tc.report([87])) != fingerprint(Toolchain().report([87]))  # cached cubins are per ptxas


def test_driver_too_old_is_refused_before_any_compile(tmp_path, monkeypatch):
    """JetPack 6's CUDA 12.6 driver cannot load cubins from the bundled ptxas (12.9): one line naming
    the fix, nothing compiled; the target's own toolkit passes the check."""
    from phm.trt_plugins.toolchain import Toolchain, check_driver

    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    res = CliRunner().invoke(main, ["--arch", "sm_87", "--driver-cuda", "12.6", "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "sm_87 cubins would be assembled by ptxas 12.9" in res.output and "--cuda-home /usr/local/cuda-12.6" in res.output
    assert not (tmp_path / "out" / "generated").exists()
    check_driver(Toolchain(_fake_cuda_home(tmp_path / "cuda", "12.6")).report([87, 90]), "12.6")
    for bad in (["--driver-cuda", "twelve"], ["--cuda-home", str(tmp_path / "out")]):
        (tmp_path / "out").mkdir(exist_ok=True)
        res = CliRunner().invoke(main, ["--arch", "sm_87", *bad, "--out", str(tmp_path / "o2")])
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
