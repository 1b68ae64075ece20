"""`bind_weights(traced, spec, source) -> gs.Graph`: a weightless trace with its weights put back as
constants that carry no data.

The trace (graphs.export_graph with weights=False) has every parameter and buffer as a graph input
named by the wrapper's attribute path. Each becomes a constant: small ones (≤ 1 KiB) inline, every
other a weights.StreamedWeight over its source (safetensors file or in-memory array). Then the
folding the TorchScript exporter would have done, without loading a weight:
  - graphsurgeon's constant folding (ONNX Runtime) of everything that reads no streamed weight:
    shape arithmetic, the PHM mixing matrices from their bases, rotary tables;
  - Transpose / Reshape / Identity / Cast of a streamed weight folded by bookkeeping
    (StreamedWeight.transposed/reshaped/cast), so a linear's MatMul reads Wᵀ as one constant, as
    in a trace with weights. A weight another node also reads, or a tied one (an LM head that
    is the embedding table, which a VLM's embed graph reads too), keeps its Transpose: one copy.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .weights import StreamedWeight

log = logging.getLogger(__name__)

__all__ = ["bind_weights", "is_streamed", "streamed_weights"]

INLINE_BYTES = 1024


def is_streamed(t) -> bool:
    return isinstance(t, gs.Constant) and isinstance(t._values, StreamedWeight)


def streamed_weights(graph: gs.Graph) -> list[StreamedWeight]:
    """Every streamed constant's values in the graph, in a stable order."""
    return [t._values for t in graph.tensors().values() if is_streamed(t)]


def _module_tensors(spec) -> dict:
    named = dict(spec.module.named_parameters(remove_duplicate=False))
    named.update(spec.module.named_buffers(remove_duplicate=False))
    return named


def _constant(name: str, var: gs.Variable, tensor, source, tied: bool) -> gs.Constant:
    dtype = np.dtype(var.dtype) if var.dtype is not None else None
    if source is None or int(np.prod(tensor.shape)) * tensor.element_size() <= INLINE_BYTES:
        value = source.load() if source is not None else tensor.detach().numpy()
        return gs.Constant(name, np.ascontiguousarray(np.asarray(value).astype(dtype or value.dtype)))
    return gs.Constant(name, StreamedWeight(source, dtype, tied=tied))


def _replace(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    for node in list(old.outputs):
        for j, t in enumerate(node.inputs):
            if t is old:
                node.inputs[j] = new
    for j, t in enumerate(graph.outputs):
        if t is old:
            graph.outputs[j] = new


def _fold_streamed(graph: gs.Graph) -> int:
    """Fold Transpose/Reshape/Identity/Cast of streamed weights into new views; returns how many."""
    folded = 0
    for node in list(graph.nodes):
        if not node.inputs or not is_streamed(node.inputs[0]) or len(node.outputs) != 1:
            continue
        w, src = node.inputs[0]._values, node.inputs[0]
        view = None
        if node.op == "Identity":
            view = w
        elif node.op == "Cast":
            view = w.cast(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
        elif node.op == "Reshape" and isinstance(node.inputs[1], gs.Constant):
            view = w.reshaped(np.asarray(node.inputs[1].values))
        elif (node.op == "Transpose" and list(node.attrs.get("perm", [1, 0])) == [1, 0] and len(src.outputs) == 1
              and not w.tied):  # a tied table stays one copy (another graph reads it)
            view = w.transposed()
        if view is None:
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, view)
        node.outputs.clear()
        _replace(graph, out, const)
        folded += 1
    graph.cleanup()
    return folded


def _fold_constants(graph: gs.Graph) -> None:
    """graphsurgeon's folding (ONNX Runtime evaluates the constant subgraphs) of every node that reads
    no streamed weight; ONNX Runtime's optimizer warnings about the partial graphs it is given are noise."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        graph.fold_constants(should_exclude_node=lambda node: any(is_streamed(t) for t in node.inputs))
    finally:
        ort.set_default_logger_severity(2)
    graph.cleanup()


def bind_weights(traced: onnx.ModelProto, spec, source) -> gs.Graph:
    """The traced graph with its parameter inputs as (streamed) constants, folded."""
    graph = gs.import_onnx(traced)
    tensors = _module_tensors(spec)
    io_inputs = set(spec.inputs)
    for var in [v for v in graph.inputs if v.name not in io_inputs]:
        if var.name not in tensors:
            raise ValueError(f"traced graph input {var.name} is neither a graph input nor a model tensor")
        tensor = tensors[var.name]
        const = _constant(var.name, var, tensor, source.source_of(tensor), source.is_tied(tensor))
        _replace(graph, var, const)
        graph.inputs.remove(var)
    graph.cleanup()
    _fold_constants(graph)
    total = 0
    while (n := _fold_streamed(graph)):
        total += n
    _fold_constants(graph)
    graph.cleanup().toposort()
    log.debug("%s: %d streamed weights, %d views folded", spec.kind, len(streamed_weights(graph)), total)
    return graph
