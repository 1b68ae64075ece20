"""phm.export: ONNX export, graph rewrite into PHM custom ops, INT8 and TensorRT engine building.

    export_model(model_dir, ExportConfig(fp16=True), out_dir)   # checkpoint dir → artifacts dir

Modules: io_names (the I/O contract), graphs (torch wrappers + torch.onnx), rewrite (graphsurgeon
passes), reference (ORT reference functions of the PHM ops), verify (MLP report), refs (Polygraphy
reference outputs), manifest (manifest.json, commands), engine (TensorRT build), api, cli.
"""

from .api import ExportError, export_model
from .config import ExportConfig, Int4Config, Int8Config

__all__ = ["ExportConfig", "ExportError", "Int4Config", "Int8Config", "export_model"]
