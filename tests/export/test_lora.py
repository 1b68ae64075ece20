"""A model dir with a peft LoRA adapter is exported with the adapter merged."""

from __future__ import annotations

import numpy as np
import torch
from ortloop import session

from phm.export import ExportConfig, export_model
from phm.export.graphs import DecoderGraph
from tinymodels import tiny_model


def test_lora_adapter_is_merged_before_export(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "model")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter (B starts at zero)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "model")  # adapter_config.json + adapter_model.safetensors
    merged = peft_model.merge_and_unload().eval()

    art = export_model(tmp_path / "model", ExportConfig(), tmp_path / "art")
    ids = torch.tensor([[5, 9, 17, 33]])
    args = (ids, torch.ones_like(ids), torch.arange(4)[None],
            *[torch.zeros(1, 2, 0, 8) for _ in range(4)])
    with torch.no_grad():
        want = DecoderGraph(merged, embeds=False).eval()(*args)[0].numpy()
        without = DecoderGraph(tiny_model("llama"), embeds=False).eval()(*args)[0].numpy()
    sess = session(art / "decoder.onnx")
    got = sess.run(["logits"], dict(zip([i.name for i in sess.get_inputs()], [a.numpy() for a in args])))[0]
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(want - without).max() > 1e-3  # the adapter mattered
