"""Stage 1, the spec: the language's sections, its cross-field rules, safe YAML, loading, the
JSON Schema. Everything later in the pipeline starts from a validated
:class:`~llmspec.spec.sections.ModelSpec`. Needs pydantic and PyYAML only."""
