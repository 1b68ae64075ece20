"""TensorRT stand-in replay: every PHM node of real exported TensorRT twin graphs (fp32, fp16, INT8
and INT4 decoders, an INT4 fp16 vision tower; PHMFFN swiglu and plain; PHMLinear of a Qwen2-VL vision tower, PHMFFN swiglu with
biases of a Qwen2.5-VL one in fp16) goes through what
TensorRT's ONNX parser, builder and runtime do with it (creator lookup, fields from the node's
attributes, capabilities, output types and dynamic shapes, format negotiation, configure, workspace,
serialize → deserialize, attach, shape change, enqueue), with the plugin library loaded as trtexec
--staticPlugins does and a fake CUDA driver that runs every launch with a C reference of the PHM op.
Each node's output must equal ONNX Runtime's for the same inputs at T = 1, 5 and 20 tokens (the gemv,
decode and prefill kernels); a description with two inputs swapped must not (negative control)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from phm.export import Int4Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trt_plugins"))
from standin_kit import AVAILABLE, MISSING, build_standin, fake_libcuda, replay_host, write_replay  # noqa: E402

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=MISSING)
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "int8": 5e-3, "int4": 5e-3}  # of the output's max |reference|


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin-replay")
    built = build_standin(root)
    return {"host": replay_host(root, built["nvinfer"]), "lib": built["phm_trt_plugins"],
            "cuda": fake_libcuda(root / "cuda").parent}


def _replay(standin, description):
    import os

    env = {**os.environ, "LD_LIBRARY_PATH": f"{standin['cuda']}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    return subprocess.run([str(standin["host"]), str(standin["lib"]), str(description)], capture_output=True,
                          text=True, env=env, timeout=300)


CASES = [("llama", "decoder", {}, "fp32"), ("llama", "decoder", {"fp16": True}, "fp16"),
         ("llama", "decoder", {"int8": True}, "int8"), ("gpt2", "decoder", {}, "fp32"),
         ("qwen2_vl", "vision", {}, "fp32"), ("qwen2_5_vl", "vision", {"fp16": True}, "fp16"),
         ("llama", "decoder", {"int4": Int4Config(group=32)}, "int4"),
         ("qwen2_5_vl", "vision", {"fp16": True, "int4": Int4Config(group=32)}, "int4")]


@pytest.mark.parametrize("arch,kind,cfg,precision", CASES, ids=[f"{a}-{k}-{p}" for a, k, _, p in CASES])
def test_standin_replay_matches_onnx_runtime(store, standin, tmp_path, arch, kind, cfg, precision):
    art = store.artifacts(arch, True, **cfg)
    for tokens in (1, 5, 20):
        description, nodes = write_replay(art / f"{kind}.trt.onnx", tmp_path / f"t{tokens}", tokens,
                                          TOLERANCE[precision])
        assert nodes >= 2
        run = _replay(standin, description)
        assert run.returncode == 0, run.stdout + run.stderr[-2000:]
        assert f"replayed {nodes} nodes, 0 failed" in run.stdout


def test_standin_replay_catches_a_wrong_input_index(store, standin, tmp_path):
    """gate and up cores exchanged (inputs 1 and 4 of a swiglu PHMFFN): every node mismatches."""
    art = store.artifacts("llama", True)
    description, nodes = write_replay(art / "decoder.trt.onnx", tmp_path, 5, TOLERANCE["fp32"], swap=(1, 4))
    run = _replay(standin, description)
    assert run.returncode == 1 and run.stdout.count("MISMATCH") == nodes, run.stdout
