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
