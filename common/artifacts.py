"""The artifacts-dir contract between phm-export (writer) and phm-run (reader): manifest format
version, the one manifest reader and its validation, and file integrity (sizes, sha256).

    manifest = read_manifest(art)          # ArtifactError (one line: file + field) unless valid
    verify_files(art, manifest)            # sizes of every listed file (cheap: on every load)
    verify_files(art, manifest, hashes=True)   # and sha256 (phm-run --verify, phm-export --verify)

Standard library only: a runtime-only install reads artifacts without torch or onnx.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .schema import SchemaError, check, opt, positive

__all__ = ["MANIFEST_VERSION", "ArtifactError", "file_entry", "read_manifest", "sha256", "verify_files"]

MANIFEST_VERSION = 3  # 2: graphs[kind].ort_file, the graph ONNX Runtime runs as it is;
                      # 3: Qwen vision graphs take any image grid (min_pixels/max_pixels, no grid_thw)


class ArtifactError(RuntimeError):
    """An artifacts dir that is missing, malformed or not what its manifest says: one line."""


_IO = [{"name": str, "dtype": str, "shape": list}]
_GRAPH = {"file": str, "ort_file": str, "trt_file": opt(str), "io": {"inputs": _IO, "outputs": _IO},
          "external_data": opt(str), "profile": opt(dict), "plugins": opt([dict]),
          "min_pixels": opt(positive()), "max_pixels": opt(positive()), "image_size": opt(positive()),
          "image_tokens": opt(positive()),
          "ort_fusion": opt({"attention": str, "positions": opt(positive())})}
MANIFEST_SCHEMA = {
    "format_version": int,
    "graphs": {str: _GRAPH},
    "files": {str: {"bytes": int, "sha256": str}},
    "target": opt({"name": str, "sm": str}),
    "memory_plan": opt({"context": opt(int)}),
    "plugins": opt([{"name": str, "version": str, "namespace": str}]),
    "engines": opt({str: str}),
    "precision": opt(str),
    "int4_accuracy": opt(positive()),
    "model_type": opt(str),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def read_manifest(artifacts: str | Path) -> dict:
    """manifest.json of an artifacts dir, validated against the format (ArtifactError otherwise)."""
    path = Path(artifacts) / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{artifacts} is not an artifacts dir (no manifest.json)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not valid JSON: re-export the model") from None
    try:
        check(doc, MANIFEST_SCHEMA)
    except SchemaError as e:
        raise ArtifactError(f"{path}: {e}; re-export the model") from None
    if doc["format_version"] != MANIFEST_VERSION:
        raise ArtifactError(f"{path}: format_version {doc['format_version']} is not supported by this phm-run "
                            f"(reads {MANIFEST_VERSION}); re-export the model or install the matching phm-edge")
    return doc


def verify_files(artifacts: str | Path, manifest: dict, hashes: bool = False) -> int:
    """Check every file the manifest lists: present, its recorded size, and with `hashes` its sha256.
    Returns the count checked; ArtifactError names the first bad file."""
    artifacts = Path(artifacts)
    checked = 0
    for name, entry in sorted(manifest["files"].items()):
        path = artifacts / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing (listed in manifest.json): copy the whole artifacts dir")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(f"{path} is {size} bytes, manifest.json says {entry['bytes']}: the file was "
                                "changed or truncated; copy or re-export the artifacts dir")
        if hashes and sha256(path) != entry["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in manifest.json: the file was changed; "
                                "copy or re-export the artifacts dir")
        checked += 1
    return checked
