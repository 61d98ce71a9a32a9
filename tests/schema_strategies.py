"""Hypothesis strategies from the JSON Schema subset our OpenAPI document uses.

(hypothesis-jsonschema 0.23 breaks on current Hypothesis' internals, so the
fuzz derives its inputs with this small, explicit converter instead.)
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from blogqueue.service.openapi import DOCUMENT

SCHEMAS = DOCUMENT["components"]["schemas"]
LEAF_JSON = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
ANY_JSON = st.recursive(LEAF_JSON, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner,
                                                                                                 max_size=3),
                        max_leaves=8)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of([from_schema({**schema, "type": t}) for t in types])
    if types == "null":
        return st.none()
    if types == "boolean":
        return st.booleans()
    if types == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if types == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if types == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.isoformat())
        if fmt == "uuid":
            return st.uuids().map(str)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 60), 60))
    if types == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=max(schema.get("minItems", 0), 4))
    if types == "object":
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=3)
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required})
    return ANY_JSON
