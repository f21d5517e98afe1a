"""JSON Schema of a study, generated from the Pydantic models (editors use it via the
`# yaml-language-server: $schema=../schemas/study.schema.json` modeline)."""

from __future__ import annotations

import json

from neuronspec.spec.models import Study


def schema_text() -> str:
    schema = Study.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "neuronspec study"
    schema.setdefault("properties", {})["extends"] = {"type": "string", "description": "Path of a base study to merge under this one."}
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
