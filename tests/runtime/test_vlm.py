"""VLM image prompts through the runtime: ORT (vision + embed + decoder) greedy == torch generate.

Tiny random-weight Qwen2-VL / Qwen2.5-VL with PHM MLPs in both towers, shipped with a real HF
image processor (patch 4, merge 2, images resized into 16²–64² pixels: up to 64 image tokens) and a
word-level tokenizer (tinytok.py) whose special tokens
sit at the config's vision ids, so the artifacts dir is complete the way a real model's is. Test images are
scikit-image's bundled photos.
"""


import json

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from runkit import phm_run_image_json
from tinytok import word_tokenizer

from phm.export.api import export_model
from phm.export.config import ExportConfig
from phm.runtime.cli import main as phm_run
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.vlm import VisionSpec, image_processor
from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda
from tinymodels import tiny_model

STEPS = 10
PIXELS = {"min_pixels": 16 * 16, "max_pixels": 64 * 64}  # the tiny models' processor range


def _tokenizer(cfg):
    return word_tokenizer({cfg.vision_start_token_id: "<|vision_start|>", cfg.vision_end_token_id: "<|vision_end|>",
                           cfg.image_token_id: "<|image_pad|>", cfg.video_token_id: "<|video_pad|>"})


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def vlm(request, tmp_path_factory):
    from transformers import Qwen2VLImageProcessorPil

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    model = tiny_model(arch)
    config = PHMConfig(towers=("language", "vision"))
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    with torch.no_grad():  # off the projection start, so PHM ≠ a rounded dense model
        for name, p in model.named_parameters():
            if name.endswith(".cores"):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    source = root / "source"  # what a real model dir ships besides its weights
    vcfg = model.config.vision_config
    Qwen2VLImageProcessorPil(patch_size=vcfg.patch_size, merge_size=vcfg.spatial_merge_size,
                             temporal_patch_size=vcfg.temporal_patch_size, **PIXELS).save_pretrained(source)
    _tokenizer(model.config).save_pretrained(source)
    ckpt = save_phm_checkpoint(model, config, targets, root / "ckpt", source_dir=source)
    art = export_model(ckpt, ExportConfig(), root / "art")
    model = load(ckpt)
    model.generation_config.eos_token_id = None  # fixed-length greedy: the runtime gets no stop ids either
    return model, art


def _torch_generate(model, ids, images):
    ids = torch.tensor([ids])
    mm = (ids == model.config.image_token_id).int()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                         pixel_values=torch.from_numpy(images["pixel_values"]),
                         image_grid_thw=torch.from_numpy(images["image_grid_thw"]),
                         max_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_artifacts_carry_the_image_processor(vlm):
    _, art = vlm
    assert (art / "hf" / "preprocessor_config.json").is_file()
    assert image_processor(art / "hf").patch_size == 4


PHOTOS = {"astronaut": lambda: skimage.data.astronaut(),             # 512 × 512: 64 × 64 pixels
          "chelsea": lambda: skimage.data.chelsea(),                 # 300 × 451: 48 × 72 pixels
          "portrait": lambda: skimage.data.astronaut()[:, 150:330]}  # 512 × 180: 104 × 32 pixels


def _hf_grid(image) -> tuple:
    """The grid transformers' own Qwen2-VL image processor gives the image in the tiny models' range."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    hf = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, **PIXELS)
    return tuple(int(v) for v in hf(images=[Image.fromarray(image)], return_tensors="np")["image_grid_thw"][0])


def test_images_keep_their_size_and_greedy_equals_torch(vlm):
    """Three photos of different sizes and aspect ratios: each gets the grid and the image-token count
    the HF processor gives it (no resize to one fixed grid), and greedy equals transformers' generate."""
    model, art = vlm
    backend = OrtBackend.from_artifacts(art, threads=1)
    spec = backend.vision
    proc = image_processor(art / "hf")
    results, grids = [], set()
    for name, photo in PHOTOS.items():
        images = spec.image_inputs(proc, photo())
        grid = tuple(int(v) for v in images["image_grid_thw"][0])
        assert grid == _hf_grid(photo()), name
        grids.add(grid)
        ids = spec.image_prompt([5, 6, 7, 8, 9], images["image_grid_thw"])
        assert ids.count(model.config.image_token_id) == grid[1] * grid[2] // 4
        ours = generate(backend, np.array([ids]), GenerationConfig(max_new_tokens=STEPS),
                        images=images).tokens[0].tolist()
        assert ours == _torch_generate(model, ids, images), name
        backend.reset()
        results.append(backend.prefill(np.array([ids]), np.ones((1, len(ids)), np.int64), images))
    assert grids == {(1, 16, 16), (1, 12, 18), (1, 26, 8)}
    # the image steers the output: different photos give different first-step logits
    assert np.abs(results[0] - results[1]).max() > 1e-3


def test_torch_backend_image_prompt_equals_generate(vlm):
    """TorchBackend (the INT8 report's FP32/FP16 side) with an image: its own M-RoPE positions
    (vlm.mrope_step_positions, shared with the ORT backend) give HF generate's tokens."""
    from phm.runtime.torch_backend import TorchBackend

    model, art = vlm
    spec = VisionSpec.from_artifacts(art)
    images = spec.image_inputs(image_processor(art / "hf"), skimage.data.coffee())
    ids = spec.image_prompt([5, 6, 7, 8, 9], images["image_grid_thw"])
    ours = generate(TorchBackend(model), np.array([ids]), GenerationConfig(max_new_tokens=STEPS),
                    images=images).tokens[0].tolist()
    assert ours == _torch_generate(model, ids, images)


def test_text_prompt_on_vlm_equals_torch(vlm):
    model, art = vlm
    ids = [5, 6, 7, 8, 9]
    ours = generate(OrtBackend.from_artifacts(art, threads=1), np.array([ids]),
                    GenerationConfig(max_new_tokens=STEPS)).tokens[0].tolist()
    t = torch.tensor([ids])
    ref = model.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=STEPS, do_sample=False,
                         pad_token_id=0)[0, len(ids):].tolist()
    assert ours == ref


def test_phm_run_with_image_equals_torch(vlm, tmp_path):
    model, art = vlm
    photo = tmp_path / "astronaut.png"
    out = phm_run_image_json(art, "w5 w6 w7", skimage.data.astronaut(), photo, STEPS)
    spec = VisionSpec.from_artifacts(art)
    cfg = model.config
    expected_ids = [cfg.vision_start_token_id] + [cfg.image_token_id] * 64 + [cfg.vision_end_token_id, 5, 6, 7]
    assert out["prompt_ids"] == expected_ids
    ref = _torch_generate(model, expected_ids, spec.image_inputs(image_processor(art / "hf"), photo))
    stop = ref.index(2) + 1 if 2 in ref else len(ref)  # phm-run stops at the tokenizer's EOS
    assert out["tokens"] == ref[:stop]
    assert out["prefill_ms"] > 0 and out["peak_rss_mb"] > 0


def test_image_prompt_errors_are_one_line(vlm, tmp_path):
    _, art = vlm
    backend = OrtBackend.from_artifacts(art, threads=1)
    from phm.runtime.backend import BackendError

    with pytest.raises(BackendError, match="image tokens but no image"):
        backend.prefill(np.array([backend.vision.image_prompt([5], [1, 8, 8])]), np.ones((1, 19), np.int64))
    with pytest.raises(BackendError, match="do not fit"):  # the prompt lacks the image tokens
        backend.reset()
        backend.prefill(np.array([[5, 6]]), np.ones((1, 2), np.int64),
                        {"pixel_values": np.zeros((64, 96), np.float32), "image_grid_thw": np.array([[1, 8, 8]])})
    with pytest.raises(BackendError, match="the vision graph failed on an image of 64 patches"):  # ORT's error
        backend.reset()
        ids = backend.vision.image_prompt([5], [1, 8, 8])
        backend.prefill(np.array([ids]), np.ones((1, len(ids)), np.int64),
                        {"pixel_values": np.zeros((64, 7), np.float32), "image_grid_thw": np.array([[1, 8, 8]])})
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    result = CliRunner().invoke(phm_run, [str(art), "--prompt", "w5", "--image", str(bad)])
    assert result.exit_code == 1 and "cannot read image" in result.output
    assert len(result.output.strip().splitlines()) == 1


CHAT_TEMPLATE = ("{% for m in messages %}w40 {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                 "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
                 "<|vision_end|>{% else %} {{ c['text'] }}{% endif %}{% endfor %}{% endif %} w41{% endfor %}"
                 "{% if add_generation_prompt %} w42{% endif %}")


def test_chat_image_prompt_equals_the_hf_processors_ids(tmp_path):
    """--chat with an image: the image block inside the user turn exactly where the model's processor
    template puts it, token for token what the HF processor gives for the same image and text."""
    from transformers import Qwen2VLImageProcessorPil

    model = tiny_model("qwen2_vl")
    config = PHMConfig()
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    source = tmp_path / "source"
    vcfg = model.config.vision_config
    images = Qwen2VLImageProcessorPil(patch_size=vcfg.patch_size, merge_size=vcfg.spatial_merge_size,
                                      temporal_patch_size=vcfg.temporal_patch_size, **PIXELS)
    images.save_pretrained(source)
    tok = _tokenizer(model.config)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(source)  # (its chat_template.jinja is the template the processor reads too)
    ckpt = save_phm_checkpoint(model, config, targets, tmp_path / "ckpt", source_dir=source)
    art = export_model(ckpt, ExportConfig(), tmp_path / "art")
    image = skimage.data.astronaut()[:40, :60]  # resized by the processor to 40 × 64 pixels
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "photo.png")
    result = CliRunner().invoke(phm_run, [str(art), "--prompt", "w5 w17", "--image", str(tmp_path / "photo.png"),
                                          "--chat", "--max-new-tokens", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5 w17"}]}]
    # What Qwen2VLProcessor.__call__ does (it cannot be built here: its video half needs torchvision):
    # the template's text, each <|image_pad|> repeated grid.prod() // merge² times, then the tokenizer
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    grid = images(images=[Image.fromarray(image)], return_tensors="np")["image_grid_thw"][0]
    assert tuple(int(v) for v in grid) == (1, 10, 16)
    pads = int(np.prod(grid)) // vcfg.spatial_merge_size ** 2
    want = tok(text.replace("<|image_pad|>", "<|image_pad|>" * pads), add_special_tokens=False)["input_ids"]
    assert out["prompt_ids"] == want
    assert want[0] == 40 and want[-2:] == [41, 42]  # the image sits inside the user turn
