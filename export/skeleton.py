"""`weightless(model)`: an ONNX model's graph without its weight data (`shape_data` kept), for the shape and rank
inference of lean.py (symbolic shapes) and lower.py (ranks): neither needs the weights' values, and
copying hundreds of MB of initializers per inference would cost more than the inference."""

from __future__ import annotations

from typing import Callable

import onnx
from onnx import TensorProto, helper

__all__ = ["drop_unused", "graph_index", "shape_data", "weightless"]

SHAPE_DATA_BYTES = 1 << 16


def shape_data(init: onnx.TensorProto) -> bool:
    """Small integer initializers (axes, Reshape targets, indices): shape inference reads their values,
    so a weightless graph keeps them; weights it does not."""
    return (init.data_type in (TensorProto.INT64, TensorProto.INT32) and init.ByteSize() <= SHAPE_DATA_BYTES
            and init.data_location != TensorProto.EXTERNAL)  # (its data is not in memory)


def weightless(model: onnx.ModelProto, keep: Callable[[onnx.TensorProto], bool] = lambda init: False,
               nodes: list | None = None) -> onnx.ModelProto:
    """The model with every initializer that `keep` rejects turned into a typed graph input (no data),
    and `nodes` in place of the graph's nodes when given; opsets, IR version and functions kept."""
    kept, inputs = [], list(model.graph.input)
    for init in model.graph.initializer:
        if keep(init):
            kept.append(init)
        else:
            inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    graph = helper.make_graph(model.graph.node if nodes is None else nodes, model.graph.name, inputs,
                              list(model.graph.output), kept)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             functions=list(model.functions))


def graph_index(nodes) -> tuple[dict, dict]:
    """({tensor: the node producing it}, {tensor: [the nodes reading it]}) of a graph's nodes."""
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return producer, readers


def subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (they may come from the outer scope)."""
    names = set()
    for node in graph.node:
        for attr in node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                for sub in g.node:
                    names.update(sub.input)
                names |= subgraph_names(g)
    return names


def drop_unused(model: onnx.ModelProto, new_inits: list | tuple = ()) -> None:
    """Drop (in place) the nodes nothing reads, last node first, then the initializers (those of the
    graph and `new_inits`, added here) and value_info entries of tensors nothing reads any more."""
    needed = {o.name for o in model.graph.output} | subgraph_names(model.graph)
    needed |= {i for f in model.functions for n in f.node for i in n.input}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = [i for i in [*model.graph.initializer, *new_inits] if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
    infos = [v for v in model.graph.value_info if v.name in needed]  # no stale entries for dropped tensors
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
