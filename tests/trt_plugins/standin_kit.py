"""Build helpers of the TensorRT stand-in tests: the public TensorRT headers, fake AOT kernels (the
real cubins need Triton's compiler; the plugins only see the table), the stub libnvinfer.so.10,
the plugin libraries built by their own CMake project against it, the fake CUDA driver that runs
each launch with a C reference, and the replay host with its description of an exported graph's
PHM nodes (inputs, fields, ONNX Runtime's outputs)."""

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
    # "\x7fELF" + symbol + NUL: the fake driver reads the kernel's symbol from its image
    fake = [{"symbol": s.symbol, "entry": "k", "cubin": b"\x7fELF" + s.symbol.encode() + b"\0", "shared": shared,
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
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = subprocess.run(["cmake", "-S", str(PLUGINS_DIR), "-B", str(build), *generator,
                                *cmake_configure_args(gen, TRT_INCLUDE, nvinfer)], capture_output=True, text=True)
    if configure.returncode != 0:
        return configure
    return subprocess.run(["cmake", "--build", str(build), "--parallel", "2"], capture_output=True, text=True)


def fake_libcuda(out: Path) -> Path:
    """standin/fake_cuda.c as out/libcuda.so.1 (put its dir on LD_LIBRARY_PATH: the launcher dlopens it)."""
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libcuda.so.1"
    subprocess.run(["gcc", "-std=gnu11", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", f"-I{CUDA_INCLUDE}",
                    str(STANDIN / "fake_cuda.c"), "-o", str(lib), "-lm"], check=True)
    return lib


def replay_host(out: Path, nvinfer: Path) -> Path:
    """standin/replay.cpp linked against the stub libnvinfer."""
    exe = out / "replay"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
                    "-isystem", str(TRT_INCLUDE), "-isystem", str(CUDA_INCLUDE), str(STANDIN / "replay.cpp"),
                    "-o", str(exe), str(nvinfer), "-ldl", f"-Wl,-rpath,{nvinfer.parent}"], check=True)
    return exe


_DTYPES = {"float32": "f32", "float16": "f16", "int8": "i8"}


def _field_line(attr) -> str | None:
    import onnx

    value = onnx.helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.INT:
        return f"field {attr.name} INT {value}"
    if attr.type == onnx.AttributeProto.FLOATS:
        return f"field {attr.name} FLOATS {len(value)} " + " ".join(repr(float(v)) for v in value)
    if attr.type == onnx.AttributeProto.STRING:
        return f"field {attr.name} STRING {value.decode()}"
    return None


def _tensor_line(tag: str, array, path: Path) -> str:
    import numpy as np

    array = np.ascontiguousarray(array)
    path.write_bytes(array.tobytes())
    return f"{tag} {_DTYPES[array.dtype.name]} {array.ndim} {' '.join(map(str, array.shape))} {path}"


def write_replay(trt_onnx: Path, out: Path, tokens: int, tolerance: float, swap: tuple | None = None) -> tuple[Path, int]:
    """The replay description of every PHM node of a TensorRT twin graph for a random x of `tokens`
    tokens: its fields (the creator's, as the ONNX parser passes them), its initializer inputs and
    ONNX Runtime's output of the node (its reference function, tests of export/reference.py). `swap`
    = (i, j) exchanges two inputs in the description (a wrong input index: must not match).
    Returns (description path, nodes)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from phm.export.reference import attach_functions
    from phm.trt_plugins import spec

    model = onnx.load(str(trt_onnx))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fields = {op.op_type: {a.name for a in op.attributes if a.is_field} for op in (spec.PHM_LINEAR, spec.PHM_FFN)}
    rng = np.random.default_rng(tokens)
    out.mkdir(parents=True, exist_ok=True)
    lines, count = [], 0
    for node in (n for n in model.graph.node if n.domain == spec.DOMAIN):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weights = [inits[name] for name in node.input[1:]]
        cores = weights[0] if node.op_type == "PHMLinear" else weights[-3]  # PHMFFN: down's cores are last
        n = attrs["n"]
        d_in = n * (cores.shape[2] * (2 if attrs["weight_format"] == b"int4" else 1))
        if node.op_type == "PHMFFN":
            d_in = n * weights[-3].shape[0]  # down's rows = d_model / n
        dtype = np.float16 if any(w.dtype == np.float16 for w in weights) or attrs["weight_format"] != b"float" \
            else np.float32
        x = rng.standard_normal((1, tokens, d_in)).astype(dtype)
        single = helper.make_model(
            helper.make_graph([helper.make_node(node.op_type, ["x", *node.input[1:]], ["y"], domain=node.domain,
                                                **{k: v for k, v in attrs.items()})],
                              "replay", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype),
                                                                       list(x.shape))],
                              [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(x.dtype), None)],
                              [numpy_helper.from_array(inits[i], i) for i in node.input[1:]]),
            opset_imports=list(model.opset_import))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # fp16 Mul nodes the CPU provider cannot constant-fold: noise here
        y = ort.InferenceSession(attach_functions(single).SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        arrays = [x, *weights]
        if swap is not None:
            i, j = swap
            arrays[i], arrays[j] = arrays[j], arrays[i]
        name = f"{node.op_type}{count}"
        lines.append(f"node {name} {node.op_type} {attrs['plugin_version'].decode()} "
                     f"{attrs['plugin_namespace'].decode()} {tolerance}")
        lines += [line for a in node.attribute if a.name in fields[node.op_type] for line in [_field_line(a)] if line]
        lines += [_tensor_line("input", a, out / f"{name}_in{k}.bin") for k, a in enumerate(arrays)]
        lines += [_tensor_line("output", y, out / f"{name}_out.bin"), "end"]
        count += 1
    path = out / "replay.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, count


def build_standin(root: Path) -> dict:
    """The stub libnvinfer and the plugin libraries built against it under `root`:
    {"nvinfer", "phm_trt_plugins", "phm_trt_plugins_dyn", "phm_kernels": paths}."""
    nvinfer = stub_nvinfer(root / "stub")
    proc = cmake_plugins(root, nvinfer)
    if proc.returncode != 0:
        raise AssertionError((proc.stdout + proc.stderr)[-4000:])
    libs = {name: root / "build" / f"lib{name}.so" for name in ("phm_trt_plugins", "phm_trt_plugins_dyn", "phm_kernels")}
    return {"nvinfer": nvinfer, **libs}
