"""Drive exported graphs with ONNX Runtime the way a runtime does: prefill, then decode steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from phm.export import io_names as io


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def empty_past(sess: ort.InferenceSession, batch: int) -> dict:
    out = {}
    for inp in sess.get_inputs():
        if inp.name.startswith("past_key_values."):
            _, heads, _, dim = inp.shape
            dtype = np.float16 if "float16" in inp.type else np.float32
            out[inp.name] = np.zeros((batch, heads, 0, dim), dtype)
    return out


def greedy(art: Path, ids: np.ndarray, steps: int, embeds_fn=None, positions_fn=None, suppress=()) -> list[int]:
    """Greedy tokens from the decoder graph (batch 1). VLMs pass `embeds_fn(ids) -> inputs_embeds`
    and `positions_fn(start, length) -> (3, 1, length)`; LLMs feed input_ids and 1-D positions.
    `suppress`: token ids never picked (generate's min_new_tokens does that to EOS)."""
    dec = session(art / "decoder.onnx")
    past = empty_past(dec, 1)
    tokens, cur, total = [], ids, 0
    for _ in range(steps):
        seq = cur.shape[1]
        pos = (positions_fn(total, seq) if positions_fn
               else np.arange(total, total + seq, dtype=np.int64)[None])
        feed = {io.ATTENTION_MASK: np.ones((1, total + seq), np.int64), io.POSITION_IDS: pos, **past}
        if embeds_fn is None:
            feed[io.INPUT_IDS] = cur
        else:
            feed[io.INPUTS_EMBEDS] = embeds_fn(cur)
        outs = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, feed)))
        logits = outs[io.LOGITS][0, -1].astype(np.float32)
        logits[list(suppress)] = -np.inf
        nxt = int(logits.argmax())
        tokens.append(nxt)
        past = {p: outs[p.replace("past_key_values.", "present.")] for p in past}
        total += seq
        cur = np.array([[nxt]], dtype=np.int64)
    return tokens


def eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def torch_greedy(model, ids: torch.Tensor, steps: int, **extra) -> list[int]:
    """model.generate(do_sample=False) for `steps` new tokens (EOS not allowed to stop it early)."""
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                         min_new_tokens=steps, do_sample=False, **extra)
    return gen[0, ids.shape[1]:].tolist()


def collect_activations(ort_model, names: list[str], feeds, types: dict[str, int]) -> dict[str, np.ndarray]:
    """The float graph's view of calibration, the reference export/capture.py is checked against:
    (rows ≤ MAX_ROWS, K) float32 values of each tensor in `names` when ONNX Runtime runs the float
    model (PHM nodes through their reference functions) on every feed of `feeds`, in order."""
    import onnx

    from phm.export.quantize import MAX_ROWS, ort_options

    model = onnx.ModelProto()
    model.CopyFrom(ort_model)
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT),
                                                                         None))
    sess = ort.InferenceSession(model.SerializeToString(), ort_options(), providers=["CPUExecutionProvider"])
    rows: dict[str, list] = {name: [] for name in names}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            rows[name].append(np.asarray(value, np.float32).reshape(-1, value.shape[-1]))
    return {name: np.concatenate(v)[:MAX_ROWS] for name, v in rows.items()}
