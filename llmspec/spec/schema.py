"""The JSON Schema of the spec, for editors (yaml-language-server) and other tools.

A copy lives at ``specs/llmspec.schema.json``; the example specs point at it with a
``# yaml-language-server: $schema=llmspec.schema.json`` first line, and a test checks that the
copy is current. Regenerate it with ``llmspec schema -o specs/llmspec.schema.json``.
"""

from __future__ import annotations

import json
from typing import Any

from llmspec.spec.sections import ModelSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12) as a dict."""
    schema = ModelSpec.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, "title": "llmspec model spec", **schema}


def json_schema_text() -> str:
    """The JSON Schema as stable, indented JSON text ending in a newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
