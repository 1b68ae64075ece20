"""PHM checkpoint dir: a Hugging Face model dir + phm_config.json, PHM cores instead of dense MLPs.

    out/
      config.json, generation_config.json, tokenizer files …   (as save_pretrained writes them)
      model.safetensors          every weight; PHM layers as `<path>.cores` (d_out/n, B, d_in/n)
                                 and `<path>.bias`, no dense weight for them
      phm_config.json            {"format_version", "phm": PHMConfig, "layers": [PHMTarget…],
                                  "blocks": [MLPBlock…] (MLP structure the exporter rewrites)}

`save_phm_checkpoint` writes atomically (temp dir + rename); `load(dir)` rebuilds the model. A plain
HF model dir (no phm_config.json) loads as the dense model, so the dense baseline goes through the
same pipeline. Weights are read with safetensors only (never pickle).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from phm.common.fsutil import atomic_dir
from phm.common.schema import SchemaError, check, opt, positive

from .arch import find_mlp_blocks
from .hypercomplex import PHMLinear
from .inject import CONFIG_FORMAT_VERSION, PHMConfig, PHMResidualLinear, PHMTarget

__all__ = ["PHM_CONFIG_NAME", "WEIGHTS_NAME", "empty_model", "load", "phm_config_doc", "read_model_config",
           "read_phm_config", "save_phm_checkpoint"]

PHM_CONFIG_NAME = "phm_config.json"
WEIGHTS_NAME = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")


def phm_config_doc(config: PHMConfig, targets: list[PHMTarget], blocks: list, teacher: str | None = None) -> dict:
    """The content of phm_config.json: the PHM settings, the replaced layers, the MLP blocks and,
    when known, the dense model dir the checkpoint was made from (its teacher: reports show its row)."""
    doc = {"format_version": CONFIG_FORMAT_VERSION, "phm": config.to_dict(),
           "layers": [asdict(t) for t in targets], "blocks": [asdict(b) for b in blocks]}
    if teacher is not None:
        doc["teacher"] = teacher
    return doc


def save_phm_checkpoint(model: nn.Module, config: PHMConfig, targets: list[PHMTarget], out_dir: str | Path,
                        source_dir: str | Path | None = None, overwrite: bool = False,
                        extra_files: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> Path:
    """Write a PHM-only model (call drop_dense first; merge LoRA first) as a checkpoint dir.

    Non-weight files of `source_dir` (tokenizer, processor, chat template …) are copied along, and
    phm_config.json names it as the checkpoint's teacher (its absolute path).
    `extra_files` ({name: text}) are written beside them (e.g. distill_config.json); entries of an
    existing `out_dir` named in `keep` (e.g. the trainer's train_state/) are carried over.
    """
    out_dir = Path(out_dir)
    if any(isinstance(m, PHMResidualLinear) for m in model.modules()):
        raise ValueError("model still holds dense+PHM wrappers: call drop_dense(model) before saving")
    blocks = find_mlp_blocks(model, config.towers)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if source_dir is not None:
            for f in Path(source_dir).iterdir():
                if (f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and not f.name.endswith(".index.json")
                        and not f.name.startswith(".")):  # hidden: temporaries and locks, not the model's
                    shutil.copy2(f, tmp / f.name)
        model.config.architectures = [type(model).__name__]  # what load() instantiates
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None and hasattr(model, "can_generate") \
                and model.can_generate():
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        teacher = str(Path(source_dir).resolve()) if source_dir is not None else None
        (tmp / PHM_CONFIG_NAME).write_text(json.dumps(phm_config_doc(config, targets, blocks, teacher), indent=2,
                                                      sort_keys=True) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for name in keep:
            src = out_dir / name
            if src.is_dir():  # copied, not moved: an interrupted save leaves the old dir whole
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
    return out_dir


_DIM = opt(positive(int))
_DIMS = {k: _DIM for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_key_value_heads", "vocab_size", "max_position_embeddings", "n_embd", "n_layer",
                           "n_head", "n_positions", "depth", "embed_dim", "patch_size", "image_size")}
# What this package reads of a Hugging Face config.json before transformers builds the model from it
# (a string where a size belongs otherwise fails deep inside a model constructor)
MODEL_CONFIG_SCHEMA = {"model_type": str, "architectures": opt([str]), **_DIMS,
                       "text_config": opt(_DIMS), "vision_config": opt(_DIMS)}
PHM_CONFIG_SCHEMA = {
    "format_version": int,
    "phm": {"n": positive(int), "num_bases": positive(int), "bases": opt(str)},
    "teacher": opt(str),
    "layers": [{"name": str, "block": str, "tower": str, "layer": int, "role": str, "num_bases": positive(int),
                "in_features": positive(int), "out_features": positive(int), "bias": bool, "transposed": bool}],
}


def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a model dir, parsed and checked against what this package reads of it
    (ValueError naming file and field)."""
    path = Path(model_dir) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    try:
        check(doc, MODEL_CONFIG_SCHEMA)
    except SchemaError as e:
        raise ValueError(f"{path}: {e}") from None
    return doc


def read_phm_config(model_dir: str | Path) -> dict | None:
    """The parsed phm_config.json of a checkpoint dir, or None for a plain HF model dir."""
    path = Path(model_dir) / PHM_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format_version") != CONFIG_FORMAT_VERSION:
        version = doc.get("format_version") if isinstance(doc, dict) else None
        raise ValueError(f"{path}: format_version {version!r} is not supported "
                         f"(expected {CONFIG_FORMAT_VERSION})")
    try:
        check(doc, PHM_CONFIG_SCHEMA)
    except SchemaError as e:
        raise ValueError(f"{path}: {e}") from None
    return doc


def _model_class(model_dir: Path):
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_dir} is not a Hugging Face model dir: {str(e).splitlines()[0]}") from None
    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise ValueError(f"{model_dir}/config.json names no architecture transformers knows ({names})")
    return cls, config


def _checked_dir(model_dir: Path) -> tuple[type, object, dict | None]:
    """(model class, config, phm_config.json or None) of a checkpoint dir, or ValueError in one line."""
    if not model_dir.is_dir():
        raise ValueError(f"model dir {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} has no config.json: not a Hugging Face model dir")
    read_model_config(model_dir)
    cls, config = _model_class(model_dir)
    doc = read_phm_config(model_dir)
    if doc is None and not any(model_dir.glob("*.safetensors")):
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ValueError(f"{model_dir} has no .safetensors weights"
                         + (f" (found {', '.join(pickles)}: pickle weights are never loaded; re-save the "
                            "model with safetensors)" if pickles else ""))
    if doc is not None and not (model_dir / WEIGHTS_NAME).is_file():
        raise ValueError(f"{model_dir} has no {WEIGHTS_NAME}")
    return cls, config, doc


def _swap_phm_layers(model: nn.Module, doc: dict) -> None:
    """Put the PHMLinear of every layer phm_config.json names in place of its dense linear."""
    phm_cfg = PHMConfig.from_dict(doc["phm"])
    known = {f.name for f in fields(PHMTarget)}
    for t in (PHMTarget(**{k: v for k, v in layer.items() if k in known}) for layer in doc["layers"]):
        try:
            model.get_submodule(t.name)
        except AttributeError:
            raise ValueError(f"{PHM_CONFIG_NAME} names layer {t.name}, which the model does not have") from None
        parent, _, child = t.name.rpartition(".")
        setattr(model.get_submodule(parent), child,
                PHMLinear(t.in_features, t.out_features, n=phm_cfg.n, num_bases=t.num_bases, bias=t.bias,
                          bases=phm_cfg.bases))


def empty_model(model_dir: str | Path) -> nn.Module:
    """The model of a checkpoint dir (PHM or plain HF) with its structure and no weights: parameters
    on the meta device (buffers computed as usual), tied weights tied, eval mode. What an exporter
    that streams the weights from the safetensors files traces; nothing of the weights is read."""
    from accelerate import init_empty_weights

    model_dir = Path(model_dir)
    cls, config, doc = _checked_dir(model_dir)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
        if doc is not None:
            _swap_phm_layers(model, doc)
    model.tie_weights()
    return model.eval()


def load(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild the model of a checkpoint dir (PHM or plain HF) in eval mode.

    Raises ValueError with one clear line for a missing/corrupt dir or weights file.
    """
    model_dir = Path(model_dir)
    cls, config, doc = _checked_dir(model_dir)
    if doc is None:
        try:
            model = cls.from_pretrained(model_dir, local_files_only=True, dtype=dtype, use_safetensors=True)
        except (OSError, ValueError, SafetensorError, RuntimeError) as e:
            raise ValueError(f"cannot load weights of {model_dir}: {str(e).splitlines()[0]}") from None
        return model.eval()
    weights = model_dir / WEIGHTS_NAME
    model = cls(config)
    _swap_phm_layers(model, doc)
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ValueError(f"cannot load {weights}: {str(e).splitlines()[0]}") from None
    return model.to(dtype).eval()
