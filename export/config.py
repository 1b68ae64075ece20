"""ExportConfig: what `export_model` writes and for which target (saved as export_config.json)."""

from __future__ import annotations

import math

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .memory_plan import DEVICES

__all__ = ["CALIB_METHODS", "EXPORT_CONFIG_VERSION", "INT4_ACCURACY", "INT4_GROUPS", "INT4_METHODS", "TARGETS", "ExportConfig",
           "Int4Config", "Int8Config"]

EXPORT_CONFIG_VERSION = 2  # 2: the INT8 settings are one nested object ("int8")

# GPU architecture per target, from the memory planner's device table (one source): the Jetson Orin
# modules (JetPack 6: TensorRT 10.3, sm_87) and a desktop GPU (sm_90).
TARGETS = {name: device.sm for name, device in DEVICES.items()}
# phm.export.calibrate.make_calibrator's, and "mse": the clip with the least output error of the
# quantized linears (quantize.choose_scales; it needs the weights, so it is not an activation calibrator)
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
INT4_GROUPS = (32, 64, 128)        # block sizes along the input dimension (MatMulNBits/TensorRT: powers of two)
INT4_ACCURACY = (1, 4)   # ONNX Runtime MatMulNBits accuracy levels: fp32, INT8 activations
INT4_METHODS = ("rtn", "awq", "gptq")  # round-to-nearest | activation-aware channel scales (awq.py) | GPTQ (gptq.py)


@dataclass(frozen=True)
class Int8Config:
    """The settings of an INT8 export (`ExportConfig.int8`; export_config.json's "int8" object)."""

    calib_data: str | None = None    # calibration data (folder/JSONL/TXT); None: the shipped set
    calib_method: str = "mse"        # activation amax: mse (output-error clip) | minmax | percentile (99.99)
                                     # | entropy (KL); mse: measured best on SmolLM2 (docs/int8.md)
    lm_head: bool = False            # also W8A8 the LM head (off: logits are the most sensitive matmul)
    rotate: bool = True              # rotate W8A8 inputs (x·Q in the graph, Qᵀ·W in the weight; rotate.py)
    smooth: bool | None = None       # SmoothQuant of W8A8 inputs, α searched per tensor; None: only where the
                                     # inputs are not rotated (after rotation it cost accuracy: docs/int8.md)
    activations: bool = True         # False: weight-only INT8 everywhere (--int8-weights-only; no activation Q/DQ)
    report_tokens: int = 512         # held-out tokens of the accuracy report (report.md)
    report_data: str | None = None   # VLM report: image+prompt pairs for the answer agreement
                                     # (folder/JSONL); None: the calibration data's images

    def __post_init__(self):
        for name in ("lm_head", "rotate", "activations"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"int8.{name} must be a bool, got {getattr(self, name)!r}")
        if self.smooth is not None and not isinstance(self.smooth, bool):
            raise ValueError(f"int8.smooth must be a bool or None, got {self.smooth!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ValueError(f"int8.calib_method must be one of {', '.join(CALIB_METHODS)}, got {self.calib_method!r}")
        if not isinstance(self.report_tokens, int) or self.report_tokens < 1:
            raise ValueError(f"int8.report_tokens must be a positive integer, got {self.report_tokens!r}")

    @property
    def smoothing(self) -> bool:
        """Whether W8A8 inputs get the SmoothQuant α search (`smooth`, resolved)."""
        return (not self.rotate) if self.smooth is None else self.smooth


@dataclass(frozen=True)
class Int4Config:
    """The settings of an INT4 weight-only export (`ExportConfig.int4`; export_config.json's "int4")."""

    group: int = 128                 # INT4 block along the input dimension (quantize_int4.py)
    lm_head: bool = False            # also INT4 the LM head (off: logits are the most sensitive matmul)
    method: str = "awq"              # awq (activation-aware scales from the calibration data) | gptq
                                     # (second-order rounding from it) | rtn; the default is the one
                                     # measured best on SmolLM2, dense and PHM (docs/int4.md)
    calib_data: str | None = None    # calibration data for awq and the report; None: the shipped set
    report_tokens: int = 512         # held-out tokens of the accuracy report (report.md)
    report_data: str | None = None   # VLM report: image+prompt pairs for the answer agreement
    accuracy: int = 1                # ONNX Runtime's MatMulNBits arithmetic: 1 fp32 on the dequantized
                                     # weights (W4A16, what the graph says), 4 INT8 activations per block
                                     # (ORT GenAI's CPU default; faster, and the report measures it)

    def __post_init__(self):
        if self.accuracy not in INT4_ACCURACY:
            raise ValueError(f"int4.accuracy must be one of {', '.join(map(str, INT4_ACCURACY))}, got {self.accuracy!r}")
        if self.group not in INT4_GROUPS:
            raise ValueError(f"int4.group must be one of {', '.join(map(str, INT4_GROUPS))}, got {self.group!r}")
        if not isinstance(self.lm_head, bool):
            raise ValueError(f"int4.lm_head must be a bool, got {self.lm_head!r}")
        if self.method not in INT4_METHODS:
            raise ValueError(f"int4.method must be one of {', '.join(INT4_METHODS)}, got {self.method!r}")
        if not isinstance(self.report_tokens, int) or self.report_tokens < 1:
            raise ValueError(f"int4.report_tokens must be a positive integer, got {self.report_tokens!r}")


def _settings(name: str, value, cls):
    """A quantization field as its settings object: True → defaults, False/None → None, a dict (JSON) → cls(**it)."""
    if value is True:
        return cls()
    if value is False or value is None:
        return None
    if isinstance(value, dict):
        return cls(**value)
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be an {cls.__name__}, a bool or None, got {value!r}")
    return value


@dataclass
class ExportConfig:
    """Options of one export. Validated on construction (ValueError naming the field)."""

    fp16: bool = False               # write an fp16 graph (norm/softmax statistics stay fp32)
    int8: Int8Config | None = None   # explicit Q/DQ (attention) + INT8 weight-only PHM cores (quantize.py);
                                     # True means Int8Config(), False None
    int4: Int4Config | None = None   # INT4 weight-only dense linears + INT4 PHM cores (quantize_int4.py);
                                     # exclusive with int8; True means Int4Config(), False None
    strict: bool = False             # any PHM-configured MLP not rewritten is an error
    target: str = "agx-orin"         # orin-nano | orin-nx | agx-orin (sm_87, TensorRT 10.3) | desktop (sm_90)
    device_gib: float | None = None  # the target's memory when not its table value (e.g. Orin Nano 4GB)
    require_engine: bool = False     # fail when TensorRT is not importable instead of skipping
    max_batch: int = 1               # TensorRT optimisation profile upper bounds
    max_sequence: int = 2048         # past + new tokens (the KV cache the memory plan sizes); clipped to
                                     # the model's position limit
    opt_sequence: int = 128          # profile "opt" prompt length
    external_data_mb: int = 1024     # weights go to model.onnx.data above this size (protobuf: 2 GiB)
    min_pixels: int | None = None    # Qwen VLMs: the image pixel range the runtime resizes into and the
    max_pixels: int | None = None    # vision engine's profile covers; None: the model's image processor's
    overwrite: bool = False          # replace an existing non-empty output dir

    def __post_init__(self):
        self.int8 = _settings("int8", self.int8, Int8Config)
        self.int4 = _settings("int4", self.int4, Int4Config)
        if self.int4 and self.int8:
            raise ValueError("int4 and int8 are exclusive: choose one weight precision")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        for name in ("max_batch", "max_sequence", "opt_sequence"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.opt_sequence > self.max_sequence:
            raise ValueError(f"opt_sequence {self.opt_sequence} exceeds max_sequence {self.max_sequence}")
        reserve = DEVICES[self.target].os_reserve_gib
        if self.device_gib is not None and (not isinstance(self.device_gib, (int, float))
                                            or not math.isfinite(self.device_gib) or self.device_gib <= reserve):
            raise ValueError(f"device_gib must exceed the {reserve:g} GiB the OS of {self.target} keeps, "
                             f"got {self.device_gib!r}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        if not isinstance(self.external_data_mb, int) or self.external_data_mb < 0:
            raise ValueError(f"external_data_mb must be a non-negative integer, got {self.external_data_mb!r}")

    @property
    def inputs(self) -> dict:
        """The files the export reads besides the model dir ({what: path or None})."""
        quant = self.quant
        return {"calibration data": quant.calib_data if quant else None,
                "report data": quant.report_data if quant else None}

    @property
    def quant(self) -> Int8Config | Int4Config | None:
        """The quantized export's settings (int8 or int4), None for a float export."""
        return self.int8 or self.int4

    @property
    def precision(self) -> str:
        """Weight precision: "int8"/"int4" (with fp32 or fp16 activations, see `activations`), "fp16", "fp32"."""
        return "int8" if self.int8 else "int4" if self.int4 else "fp16" if self.fp16 else "fp32"

    @property
    def activations(self) -> str:
        """Activation dtype of the graph ("fp16" with --fp16; INT8/INT4 PHM nodes always run fp16)."""
        return "fp16" if self.fp16 else "fp32"

    @property
    def sm(self) -> str:
        return TARGETS[self.target]

    def to_dict(self) -> dict:
        return {"format_version": EXPORT_CONFIG_VERSION, **asdict(self)}  # (asdict nests the Int8Config)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> "ExportConfig":
        data = json.loads(Path(path).read_text())
        version = data.pop("format_version", None)
        if version != EXPORT_CONFIG_VERSION:
            raise ValueError(f"{path}: export config format_version {version!r} is not supported "
                             f"(expected {EXPORT_CONFIG_VERSION})")
        return cls(**data)
