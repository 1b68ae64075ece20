"""The INT8 report of a VLM export: held-out text metrics through inputs_embeds and the answer
agreement on image+prompt pairs (export/vlm_answers.py), for LLaVA (plain positions) and Qwen2-VL
(M-RoPE). Tiny random-weight PHM checkpoints shipped with a real image processor and a word-level
tokenizer; the images are scikit-image's photos. The reported agreement is recomputed here through
the runtime on the finished artifacts dir (OrtBackend.from_artifacts) and PyTorch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from phm.export.api import export_model
from phm.export.cli import main as phm_export
from phm.export.config import ExportConfig, Int8Config
from phm.export.vlm_answers import ANSWER_TOKENS, answer_agreement
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.torch_backend import TorchBackend
from phm.runtime.vlm import VisionSpec, image_processor
from phm.trainer import load
from tinymodels import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from tinytok import word_tokenizer  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
UNK = "w3"  # the held-out English text is all out-of-vocabulary words: not the pad id, whose embedding is 0


def _ship_processor_and_tokenizer(arch: str, ckpt: Path) -> None:
    """What a real model dir ships besides its weights: an image processor and a tokenizer."""
    cfg = tiny_model(arch).config
    if arch == "llava_dinov2":
        from transformers import BitImageProcessor

        BitImageProcessor().save_pretrained(ckpt)
        word_tokenizer({cfg.image_token_id: "<image>"}, unk=UNK).save_pretrained(ckpt)
    else:
        from transformers import Qwen2VLImageProcessorPil

        v = cfg.vision_config
        Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                 temporal_patch_size=v.temporal_patch_size, min_pixels=16 * 16,
                                 max_pixels=64 * 64).save_pretrained(ckpt)  # ≤ 64 image tokens per photo
        word_tokenizer({cfg.vision_start_token_id: "<|vision_start|>", cfg.vision_end_token_id: "<|vision_end|>",
                        cfg.image_token_id: "<|image_pad|>", cfg.video_token_id: "<|video_pad|>"}, unk=UNK).save_pretrained(ckpt)


def _report_data(root: Path, arch: str) -> Path:
    """A JSONL of image+prompt pairs (LLaVA: the image placeholder inside the prompt)."""
    folder = root / "report-data"
    folder.mkdir()
    lines = []
    for i, name in enumerate(PHOTOS):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
        prompt = f"w{5 + i} <image> w7 w8" if arch == "llava_dinov2" else f"w{5 + i} w7 w8"
        lines.append(json.dumps({"image": f"{name}.png", "prompt": prompt, "text": "w9"}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module", params=["llava_dinov2", "qwen2_vl"])
def vlm_int8(request, tmp_path_factory):
    from exportkit import make_phm_checkpoint

    arch = request.param
    root = tmp_path_factory.mktemp(f"{arch}-report")
    ckpt = make_phm_checkpoint(arch, root / "ckpt")
    _ship_processor_and_tokenizer(arch, ckpt)
    data = _report_data(root, arch)
    art = export_model(ckpt, ExportConfig(int8=Int8Config(report_data=str(data), report_tokens=64)), root / "art")
    return arch, ckpt, data, art


def test_vlm_report_rows_and_answers(vlm_int8):
    arch, ckpt, data, art = vlm_int8
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["report"] == "report.md"
    rows = {r["precision"]: r["metrics"] for r in json.loads((art / "report.json").read_text())}
    assert set(rows) == {"fp32", "fp16", "int8"}
    assert rows["fp32"]["answer_agreement"] == 1.0
    assert rows["int8"]["logit_cosine"] > 0.98  # the text part ran through inputs_embeds (and its positions)
    md = (art / "report.md").read_text()
    assert "answer agreement" in md and f"to {len(PHOTOS)} image+prompt pairs (--report-data)" in md

    # the reported INT8 agreement, recomputed through the runtime on the finished artifacts
    model = load(ckpt).eval()
    model.set_attn_implementation("eager")
    spec = VisionSpec.from_artifacts(art)
    proc = image_processor(art / "hf")
    tok = word_tokenizer(unk=UNK)
    cfg = GenerationConfig(max_new_tokens=ANSWER_TOKENS, stop_ids=(2,), pad_id=0)
    ort_backend, torch_backend = OrtBackend.from_artifacts(art), TorchBackend(model)
    fp32, int8 = [], []
    for line in data.read_text().splitlines():
        pair = json.loads(line)
        images = spec.image_inputs(proc, data.parent / pair["image"])  # Qwen: + image_grid_thw
        ids = np.array([spec.image_prompt(tok(pair["prompt"])["input_ids"], images.get("image_grid_thw"))])
        fp32.append(generate(torch_backend, ids, cfg, images=images).tokens[0].tolist())
        int8.append(generate(ort_backend, ids, cfg, images=images).tokens[0].tolist())
    assert rows["int8"]["answer_agreement"] == pytest.approx(answer_agreement(fp32, int8))


def test_vlm_report_without_images_says_so(store):
    """No --report-data and no images in the (default) calibration data: text rows only, and the
    note says the answers were not measured."""
    art = store.artifacts("qwen2_vl", True, int8=True)
    rows = json.loads((art / "report.json").read_text())
    assert [r["metrics"]["answer_agreement"] for r in rows] == [None, None, None]
    assert "Answer agreement: not measured" in (art / "report.md").read_text()


def test_calibration_images_without_processor_skip_the_answers(store, tmp_path):
    """Images in --calib-data of a model dir without an image processor: the export and the text rows
    go on, the answers are left out with a warning (they were not asked for explicitly)."""
    data = _report_data(tmp_path, "qwen2_vl")
    art = export_model(store.checkpoint("qwen2_vl", True),
                       ExportConfig(int8=Int8Config(calib_data=str(data), report_tokens=64)), tmp_path / "art")
    rows = json.loads((art / "report.json").read_text())
    assert [r["metrics"]["answer_agreement"] for r in rows] == [None, None, None]
    assert "Answer agreement: not measured" in (art / "report.md").read_text()


def test_report_data_errors(store, tmp_path):
    text_only = tmp_path / "prompts.txt"
    text_only.write_text("w5 w6\n")
    images = _report_data(tmp_path, "llava_dinov2")
    cases = {"llama": (text_only, "has no vision tower"), "qwen2_vl": (text_only, "holds no image"),
             "llava_dinov2": (tmp_path / "missing", "does not exist"),
             "qwen2_5_vl": (images, "holds no image processor")}  # the store's checkpoints ship none
    for arch, (data, message) in cases.items():
        out = tmp_path / f"art-{arch}"
        result = CliRunner().invoke(phm_export, [str(store.checkpoint(arch, True)), "--int8", "--report-data",
                                                 str(data), "--out", str(out)])
        assert result.exit_code != 0 and message in result.output, (arch, result.output)
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_fp16_int8_vlm_report(tmp_path):
    """--fp16 --int8 on a VLM: the fp16 vision graph takes float16 pixels, which the runtime's ORT
    backend now casts to (it fed float32 and ONNX Runtime refused: phm-run on any fp16 VLM export)."""
    from exportkit import make_phm_checkpoint

    ckpt = make_phm_checkpoint("llava_dinov2", tmp_path / "ckpt")
    _ship_processor_and_tokenizer("llava_dinov2", ckpt)
    data = _report_data(tmp_path, "llava_dinov2")
    art = export_model(ckpt, ExportConfig(fp16=True, int8=Int8Config(report_data=str(data), report_tokens=64)),
                       tmp_path / "art")
    rows = {r["precision"]: r["metrics"] for r in json.loads((art / "report.json").read_text())}
    assert rows["fp32"]["answer_agreement"] == 1.0 and rows["int8"]["answer_agreement"] is not None
    assert rows["int8"]["logit_cosine"] > 0.98
