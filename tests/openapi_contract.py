"""Checks a response against the OpenAPI document: documented status, body valid for its schema."""

from __future__ import annotations

import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator

from blogqueue.service.openapi import document

DOCUMENT = document()  # the built-in app's; the service builds the same from the app it loaded
COMPONENTS = DOCUMENT["components"]


def with_components(schema: dict[str, Any]) -> dict[str, Any]:
    """A standalone JSON Schema whose #/components/... references resolve."""
    return {**schema, "components": COMPONENTS}


def match_path(path: str) -> str:
    """The document's path template that a concrete path belongs to."""
    for template in DOCUMENT["paths"]:
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not in the OpenAPI document")


def check(resp: httpx.Response) -> None:
    template = match_path(resp.request.url.path)
    op = DOCUMENT["paths"][template][resp.request.method.lower()]
    status = str(resp.status_code)
    assert status in op["responses"], f"{resp.request.method} {template} answered undocumented {status}: {resp.text}"
    spec = op["responses"][status]
    content = spec.get("content", {})
    if "application/json" in content:
        assert resp.headers["content-type"].startswith("application/json"), resp.headers
        schema = with_components(content["application/json"]["schema"])
        errors = sorted(Draft202012Validator(schema).iter_errors(resp.json()), key=str)
        assert not errors, f"{resp.request.method} {template} {status}: {errors[0]}"
    elif "text/plain" in content:
        assert resp.headers["content-type"].startswith("text/plain")
    for header in spec.get("headers", {}):
        assert header.lower() in resp.headers, f"{status} must carry {header}"
