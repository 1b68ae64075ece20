"""Reference outputs from PyTorch as Polygraphy RunResults, with the matching inputs.

    <kind>.inputs.json   list of feed dicts (one per iteration)   polygraphy run --load-inputs
    <kind>.ref.json      RunResults, runner "torch"               polygraphy run --load-outputs

Decoder graphs get two iterations, a prefill (past_sequence = 0) and one decode step fed with the
prefill's present KV, so both uses of the graph are checked. Float inputs are given in the
graph's dtype; the reference outputs always come from the fp32 torch model (the source model).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from . import io_names as io
from .graphs import GraphSpec, text_config

__all__ = ["feed_arrays", "reference_feeds", "run_torch", "run_results_json", "inputs_json"]

PROMPT = 6  # tokens of the reference prefill


def _ids(model, batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    vocab = text_config(model).vocab_size
    return torch.randint(3, vocab - 8, (batch, seq), generator=torch.Generator().manual_seed(seed))


def reference_feeds(spec: GraphSpec, model) -> list[dict[str, torch.Tensor]]:
    """Fixed, seeded torch inputs per iteration for one graph (fp32; cast on saving)."""
    if spec.kind == "encoder":
        ids = _ids(model, 2, 7)
        mask = torch.ones(2, 7, dtype=torch.int64)
        mask[1, 5:] = 0  # right padding in row 1
        return [{io.INPUT_IDS: ids, io.ATTENTION_MASK: mask}]
    if spec.kind == "embed":
        return [{io.INPUT_IDS: _ids(model, 1, PROMPT)}]
    if spec.kind == "vision":  # Qwen: the trace's grid (positions, segments), other pixels
        gen = torch.Generator().manual_seed(2)
        feed = dict(zip(spec.inputs, spec.sample))
        return [{**feed, io.PIXEL_VALUES: torch.randn(spec.sample[0].shape, generator=gen)}]
    # decoder: prefill, then one decode step on its present KV
    embeds = spec.inputs[0] == io.INPUTS_EMBEDS
    mrope = spec.sample[2].dim() == 3  # position_ids sample: (3, batch, seq) for M-RoPE VLMs
    ids = _ids(model, 1, PROMPT + 1)
    first = model.get_input_embeddings()(ids).detach() if embeds else ids

    def positions(start: int, length: int) -> torch.Tensor:
        pos = torch.arange(start, start + length).unsqueeze(0)
        return pos.unsqueeze(0).expand(3, 1, length).contiguous() if mrope else pos

    layers = (len(spec.inputs) - 3) // 2
    kv_heads, head_dim = spec.sample[3].shape[1], spec.sample[3].shape[3]  # past sample (b, h, p, d)
    past = {name: torch.zeros(1, kv_heads, 0, head_dim) for name in io.past_names(layers)}
    prefill = {spec.inputs[0]: first[:, :PROMPT], io.ATTENTION_MASK: torch.ones(1, PROMPT, dtype=torch.int64),
               io.POSITION_IDS: positions(0, PROMPT), **past}
    outs = run_torch(spec, [prefill])[0]
    present = dict(zip(io.past_names(layers), (outs[name] for name in io.present_names(layers))))
    decode = {spec.inputs[0]: first[:, PROMPT:], io.ATTENTION_MASK: torch.ones(1, PROMPT + 1, dtype=torch.int64),
              io.POSITION_IDS: positions(PROMPT, 1), **{k: torch.from_numpy(v) for k, v in present.items()}}
    return [prefill, decode]


def run_torch(spec: GraphSpec, feeds: list[dict]) -> list[OrderedDict]:
    """Outputs of the wrapper (fp32) per iteration, as name → float32/int64 numpy arrays."""
    results = []
    module_dtype = next(spec.module.parameters()).dtype
    for feed in feeds:
        args = [feed[name] for name in spec.inputs]
        args = [a.to(module_dtype) if a.is_floating_point() else a for a in args]
        with torch.no_grad():
            out = spec.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        results.append(OrderedDict((name, t.detach().float().numpy()) for name, t in zip(spec.outputs, out)))
    return results


def feed_arrays(feed: dict, float_dtype) -> OrderedDict:
    """One torch feed as the numpy arrays a runner takes (float inputs in the graph's dtype)."""
    return OrderedDict((k, v.numpy().astype(float_dtype) if v.is_floating_point() else v.numpy())
                       for k, v in feed.items())


def inputs_json(feeds: list[dict], float_dtype=np.float32) -> str:
    from polygraphy.json import to_json

    return to_json([feed_arrays(f, float_dtype) for f in feeds])


def run_results_json(outputs: list[OrderedDict], float_dtype=np.float32, runner_name: str = "torch") -> str:
    from polygraphy.comparator import RunResults
    from polygraphy.json import to_json

    results = RunResults()
    results.add([OrderedDict((k, v.astype(float_dtype) if v.dtype.kind == "f" else v) for k, v in o.items())
                 for o in outputs], runner_name=runner_name)
    return to_json(results)
