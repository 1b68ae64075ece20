"""A small structural validator for the JSON files the tools read (manifest.json, phm_config.json,
config.json): a wrong type, a missing key or a wrong shape becomes one SchemaError naming the field,
instead of a KeyError or TypeError wherever the value is first used.

A schema is written as the data looks:
    int, str, float, bool, dict, list   that type (bool is not an int; an int is a float)
    {"key": schema, ...}                an object with these keys (others allowed)
    {str: schema}                       an object whose every value matches schema
    [schema]                            a list whose every item matches schema
    opt(schema)                         the key may be missing or null
    positive(int)                       an int ≥ 1
"""

from __future__ import annotations

__all__ = ["SchemaError", "check", "opt", "positive"]


class SchemaError(ValueError):
    """`field 'a.b[2].c' …`: one line."""


class opt:  # noqa: N801 - reads as a schema word
    def __init__(self, schema):
        self.schema = schema


class positive:  # noqa: N801
    def __init__(self, kind=int):
        self.kind = kind


_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "an object",
          list: "a list", type(None): "null"}


def _type_name(value) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def _is(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check(value, schema, where: str = "") -> None:
    """Raise SchemaError for the first part of `value` that does not match `schema`."""
    field = f"field '{where}'" if where else "the file"
    if isinstance(schema, opt):
        if value is not None:
            check(value, schema.schema, where)
        return
    if isinstance(schema, positive):
        if not _is(value, schema.kind) or value < 1:
            raise SchemaError(f"{field} must be a positive integer, got {value!r}")
        return
    if isinstance(schema, type):
        if not _is(value, schema):
            raise SchemaError(f"{field} must be {_NAMES.get(schema, schema.__name__)}, got {_type_name(value)}")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise SchemaError(f"{field} must be a list, got {_type_name(value)}")
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{field} must be an object, got {_type_name(value)}")
        if len(schema) == 1 and next(iter(schema)) is str:  # a map: every value has the schema
            item = schema[str]
            for key, sub in value.items():
                check(sub, item, f"{where}.{key}" if where else key)
            return
        for key, sub in schema.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                if isinstance(sub, opt):
                    continue
                raise SchemaError(f"field '{name}' is missing")
            check(value[key], sub, name)
        return
    raise TypeError(f"bad schema {schema!r}")
