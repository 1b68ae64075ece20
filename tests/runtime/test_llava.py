"""LLaVA image prompts through the runtime: ORT (vision + embed + decoder, plain positions) greedy ==
torch generate, through the API and phm-run.

Tiny random-weight DINOv2-LLaVA (the samples/vlm layout: DINOv2 tower, CLS dropped, Llama LM),
dense and with PHM MLPs, and with PHM MLPs and a head_dim the fused attention takes (the decoder
as GroupQueryAttention on the runtime's shared KV buffer, fed inputs_embeds), shipped the way a real model dir is: DINOv2's own image processor
(BitImageProcessor with its default resize 256 / crop 224, which the runtime must bypass for the
28-pixel tower) and a word-level tokenizer whose `<image>` sits at the config's image_token_id.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from PIL import Image
from runkit import phm_run_image_json
from tinytok import word_tokenizer

from phm.export.api import export_model
from phm.export.config import ExportConfig
from phm.runtime.backend import BackendError
from phm.runtime.cli import main as phm_run
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.vlm import VisionSpec, image_processor
from phm.trainer import load
from tinymodels import save_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))  # the export tests' PHM checkpoint
from exportkit import make_phm_checkpoint  # noqa: E402

ARCH = "llava_dinov2"
STEPS = 10
IMAGE_TOKENS = 16  # (28 / 7)² DINOv2 patches, CLS dropped


@pytest.fixture(scope="module", params=["dense", "phm", "phm-fused"])
def llava(request, tmp_path_factory):
    from transformers import BitImageProcessor

    root = tmp_path_factory.mktemp(f"llava-{request.param}")
    arch = ARCH + "_gqa" if request.param.endswith("fused") else ARCH
    ckpt = (make_phm_checkpoint(arch, root / "ckpt") if request.param.startswith("phm")
            else save_tiny_model(arch, root / "ckpt"))
    model = load(ckpt)
    BitImageProcessor().save_pretrained(ckpt)  # DINOv2's processor, default sizes
    word_tokenizer({model.config.image_token_id: "<image>"}).save_pretrained(ckpt)
    art = export_model(ckpt, ExportConfig(), root / "art")
    model.generation_config.eos_token_id = None  # fixed-length greedy: the runtime gets no stop ids either
    return model, art


def _torch_generate(model, ids, pixels):
    """torch greedy tokens after the prompt and each step's logits (steps, vocab)."""
    ids = torch.tensor([ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.from_numpy(pixels),
                         max_new_tokens=STEPS, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         output_logits=True)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.stack(out.logits)[:, 0].numpy()


def _ort_logits(backend, ids, pixels, tokens):
    """Each step's ORT logits, fed torch's tokens. Checked to float tolerance as well as by argmax:
    the tiny tied-embedding LM mostly repeats its last token, so equal greedy tokens alone would
    not catch wrong positions or a wrong cache."""
    backend.reset()
    steps = [backend.prefill(np.array([ids]), np.ones((1, len(ids)), np.int64), {"pixel_values": pixels})]
    for k, token in enumerate(tokens[:-1]):
        steps.append(backend.decode(np.array([[token]]), np.ones((1, len(ids) + k + 1), np.int64)))
    return np.stack(steps)[:, 0]


def test_spec_and_prompt_layout(llava):
    model, art = llava
    spec = VisionSpec.from_artifacts(art)
    tok = model.config.image_token_id
    assert not spec.mrope and spec.image_tokens() == IMAGE_TOKENS and spec.image_size == 28
    assert spec.image_prompt([5, 6]) == [tok] * IMAGE_TOKENS + [5, 6]
    assert spec.image_prompt([1, 5]) == [1] + [tok] * IMAGE_TOKENS + [5]  # BOS stays first
    assert spec.image_prompt([5, tok, 6]) == [5] + [tok] * IMAGE_TOKENS + [6]  # <image> expanded in place
    with pytest.raises(ValueError, match="one image takes one"):
        spec.image_prompt([tok, 5, tok])
    pixels = spec.image_inputs(image_processor(art / "hf"), skimage.data.astronaut())["pixel_values"]
    assert pixels.shape == (1, 3, 28, 28) and pixels.dtype == np.float32


def test_image_prompt_greedy_equals_torch(llava):
    model, art = llava
    backend = OrtBackend.from_artifacts(art, threads=1)
    assert bool(backend.kv_capacity) == (model.config.text_config.head_dim == 16)  # the fused decoder
    spec = backend.vision
    ids = spec.image_prompt([5, 6, 7, 8, 9])
    proc = image_processor(art / "hf")
    first = []
    for photo in (skimage.data.astronaut(), skimage.data.chelsea()):
        pixels = spec.image_inputs(proc, photo)["pixel_values"]
        ours = generate(backend, np.array([ids]), GenerationConfig(max_new_tokens=STEPS),
                        images={"pixel_values": pixels}).tokens[0].tolist()
        ref, ref_logits = _torch_generate(model, ids, pixels)
        assert ours == ref
        logits = _ort_logits(backend, ids, pixels, ref)
        assert np.abs(logits - ref_logits).max() <= 1e-5  # logits are O(1): a decode position off by 2 is 3e-4
        first.append(logits[0])
    # the image steers the output: the two photos give different first-step logits
    assert np.abs(first[0] - first[1]).max() > 1e-3


def test_phm_run_with_image_equals_torch(llava, tmp_path):
    model, art = llava
    photo = tmp_path / "chelsea.png"
    out = phm_run_image_json(art, "w5 <image> w6 w7", skimage.data.chelsea(), photo, STEPS)
    expected_ids = [5] + [model.config.image_token_id] * IMAGE_TOKENS + [6, 7]
    assert out["prompt_ids"] == expected_ids
    pixels = VisionSpec.from_artifacts(art).image_inputs(image_processor(art / "hf"), photo)["pixel_values"]
    ref, _ = _torch_generate(model, expected_ids, pixels)
    stop = ref.index(2) + 1 if 2 in ref else len(ref)  # phm-run stops at the tokenizer's EOS
    assert out["tokens"] == ref[:stop]


def test_llava_errors_are_one_line(llava, tmp_path):
    _, art = llava
    backend = OrtBackend.from_artifacts(art, threads=1)
    with pytest.raises(BackendError, match="image tokens but no image"):
        ids = backend.vision.image_prompt([5])
        backend.prefill(np.array([ids]), np.ones((1, len(ids)), np.int64))
    with pytest.raises(BackendError, match="do not fit"):  # the prompt lacks the image tokens
        backend.reset()
        backend.prefill(np.array([[5, 6]]), np.ones((1, 2), np.int64),
                        {"pixel_values": np.zeros((1, 3, 28, 28), np.float32)})
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    result = CliRunner().invoke(phm_run, [str(art), "--prompt", "<image> w5 <image>", "--image", str(photo)])
    assert result.exit_code == 1 and "one image takes one" in result.output
    assert len(result.output.strip().splitlines()) == 1
