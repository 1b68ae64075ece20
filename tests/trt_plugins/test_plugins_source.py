"""The C++ plugins spell the contract of phm.trt_plugins.spec exactly: plugin names, version,
namespace, field names and order, field types, input positions. Read from the sources, so this runs
everywhere (test_plugins_harness.py checks the same through the compiled library where TensorRT
headers exist)."""

import re
from pathlib import Path

import pytest

from phm.trt_plugins import spec

PLUGINS = Path(spec.__file__).resolve().parent / "plugins"
COMMON_H = (PLUGINS / "PHMPluginCommon.h").read_text()
COMMON_CPP = (PLUGINS / "PHMPluginCommon.cpp").read_text()
FIELD_CONSTS = dict(re.findall(r'constexpr char const\* (kFIELD_\w+) = "(\w+)";', COMMON_H))
TRT_TYPES = {"INT": "kINT32", "FLOATS": "kFLOAT32", "STRING": "kCHAR"}


def function_body(src: str, signature: str) -> str:
    start = src.index(signature)
    depth, i = 0, src.index("{", start)
    for j in range(i, len(src)):
        depth += {"{": 1, "}": -1}.get(src[j], 0)
        if depth == 0:
            return src[i:j + 1]
    raise AssertionError(signature)


def test_namespace_and_version():
    assert re.search(rf'kPLUGIN_NAMESPACE = "{spec.PLUGIN_NAMESPACE}"', COMMON_H)
    assert re.search(rf'kPLUGIN_VERSION = "{spec.PLUGIN_VERSION}"', COMMON_H)


def test_field_constants_cover_spec():
    assert set(FIELD_CONSTS.values()) == set(spec.PHM_LINEAR.fields) | set(spec.PHM_FFN.fields)


@pytest.mark.parametrize("op", [spec.PHM_LINEAR, spec.PHM_FFN], ids=lambda o: o.op_type)
def test_creator_field_names_order_and_types(op):
    body = function_body(COMMON_CPP, "std::vector<nvinfer1::PluginField> fieldNames(bool isFFN)")
    listed = re.findall(r"PluginField\((kFIELD_\w+), nullptr, T::(k\w+)", body)
    listed += re.findall(r"emplace_back\((kFIELD_\w+), nullptr, T::(k\w+)", body)
    names = [(FIELD_CONSTS[c], t) for c, t in listed]
    expected = [(a.name, TRT_TYPES[a.onnx_type]) for a in op.attributes if a.is_field]
    if op is spec.PHM_LINEAR:
        names = [n for n in names if n[0] != "mlp_type"]
    assert names == expected


@pytest.mark.parametrize("fn", ["PHMConfig PHMConfig::parse(", "void FieldSerializer::set("])
def test_parse_and_serialize_use_every_field(fn):
    body = function_body(COMMON_CPP, fn)
    assert set(re.findall(r"kFIELD_\w+", body)) == set(FIELD_CONSTS)


@pytest.mark.parametrize("op,header", [(spec.PHM_LINEAR, "PHMLinearPlugin.h"), (spec.PHM_FFN, "PHMFFNPlugin.h")])
def test_plugin_name_and_input_positions(op, header):
    src = (PLUGINS / header).read_text()
    assert f'kPLUGIN_NAME = "{op.op_type}"' in src
    consts = {name.lower(): int(v) for name, v in re.findall(r"constexpr int32_t k(\w+) = (\d+);", src)}
    assert consts.pop("nb_inputs") == len(op.inputs)
    assert consts == {i.name: i.index for i in op.inputs}


def test_cmake_lists_every_plugin_source():
    cmake = (PLUGINS / "CMakeLists.txt").read_text()
    for cpp in PLUGINS.glob("*.cpp"):
        assert f"${{CMAKE_CURRENT_LIST_DIR}}/{cpp.name}" in cmake, cpp.name
