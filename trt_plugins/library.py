"""Where the PHM plugin library is and how it is loaded: the layout phm-build-plugins writes, which
phm-export's commands.sh and engine build and phm-run's TensorRT backend all read (standard library
only, so the runtime needs nothing else to find it).

    phm-build-plugins --arch SM --out DIR
      DIR/lib/libphm_trt_plugins.so       static registration: trtexec --staticPlugins, polygraphy --plugins
      DIR/lib/libphm_trt_plugins_dyn.so   exports getCreators: trtexec --dynamicPlugins, registry loadLibrary
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PLUGIN_LIBRARY", "dynamic_library", "load_plugins", "plugin_library"]

PLUGIN_LIBRARY = "lib/libphm_trt_plugins.so"


def plugin_library(artifacts: Path, target: str) -> Path | None:
    """$PHM_PLUGINS, else <artifacts>/plugins/<target>/lib/libphm_trt_plugins.so, if it exists."""
    env = os.environ.get("PHM_PLUGINS")
    path = Path(env) if env else Path(artifacts) / "plugins" / target / PLUGIN_LIBRARY
    return path if path.is_file() else None


def dynamic_library(plugin_lib: Path) -> Path:
    """The `_dyn` twin beside a static plugin library (libphm_trt_plugins_dyn.so)."""
    return plugin_lib.with_name(plugin_lib.stem + "_dyn" + plugin_lib.suffix)


def load_plugins(trt, plugin_lib: Path) -> None:
    """Register our creators: the `_dyn` twin through the registry (it exports getCreators), else
    dlopen the static library (REGISTER_TENSORRT_PLUGIN at load, as trtexec --staticPlugins does)."""
    dyn = dynamic_library(plugin_lib)
    if dyn.is_file():
        if not trt.get_plugin_registry().load_library(str(dyn)):  # a refusal is a null handle, not an error
            raise OSError(f"TensorRT's plugin registry did not load {dyn} (its log says why; the static "
                          "library may already be loaded: load one of the two)")
    else:
        import ctypes

        ctypes.CDLL(str(plugin_lib), mode=ctypes.RTLD_GLOBAL)
