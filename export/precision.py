"""fp16 graph passes: what must stay fp32 in an fp16 graph.

The model is traced in fp16 (HF code already upcasts RMSNorm statistics; ONNX LayerNormalization
keeps its statistics in fp32 by default, stash_type=1). The TorchScript exporter lowers
`softmax(x, dtype=float32)` as Softmax(x) followed by a Cast, i.e. it computes the attention
softmax in fp16; `upcast_softmax` moves it back to fp32: Cast(fp32) → Softmax → Cast(fp16).
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)

__all__ = ["tensor_types", "upcast_softmax"]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value ONNX shape inference can type (PHM nodes via their functions).

    Runs on a copy whose large initializers are data-less references (inference needs dims and
    types only), so it also works for models over protobuf's 2 GiB limit.
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        if len(init.raw_data) > 4096:
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            init.external_data.add(key="location", value="stripped-for-shape-inference")
    inferred = onnx.shape_inference.infer_shapes(light)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def upcast_softmax(graph: gs.Graph, types: dict[str, int]) -> int:
    """Run every fp16 Softmax in fp32 (input cast up, output cast back). Returns how many."""
    count = 0
    for node in [n for n in graph.nodes if n.op == "Softmax"]:
        x, y = node.inputs[0], node.outputs[0]
        if types.get(x.name) != onnx.TensorProto.FLOAT16:
            continue
        x32 = gs.Variable(f"{node.name}/fp32_in", dtype=onnx.TensorProto.FLOAT)
        y32 = gs.Variable(f"{node.name}/fp32_out", dtype=onnx.TensorProto.FLOAT)
        graph.nodes.append(gs.Node("Cast", name=f"{node.name}/cast_in", attrs={"to": onnx.TensorProto.FLOAT},
                                   inputs=[x], outputs=[x32]))
        node.inputs[0], node.outputs[0] = x32, y32
        graph.nodes.append(gs.Node("Cast", name=f"{node.name}/cast_out", attrs={"to": onnx.TensorProto.FLOAT16},
                                   inputs=[y32], outputs=[y]))
        count += 1
    graph.cleanup().toposort()
    log.info("upcast_softmax: %d fp16 Softmax nodes now run in fp32", count)
    return count
