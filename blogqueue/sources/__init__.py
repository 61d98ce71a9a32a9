"""Sources: where a job's subject comes from. One module per built-in source type.

A source is registered on the app (`blogqueue.App.source`) with:

- `fields`: a pydantic v2 model of the fields a job submits besides `"type"`
  (subclass `SourceFields`: strict types, unknown fields refused). It validates
  at enqueue and is the source's schema in the OpenAPI document.
- `fetch(source, config, tenant_id) -> dict`: the source stage's output, at
  run time (raises blogqueue.errors.JobError subclasses). `source` is the
  validated fields plus `"type"`; `config` is what the source registered
  (built from the process's Settings), never the whole Settings.

The built-in ones are `keyword`, `product` and `tmdb`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class SourceFields(BaseModel):
    """Base model of a source's submitted fields.

    `messages` maps a field name to the words that follow it in an error
    ("must be a string of at most 50 characters"); fields without one get
    pydantic's own message.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    messages: ClassVar[dict[str, str]] = {}


class SourceInvalid(ValueError):
    """A submitted source does not fit its fields; `field` is the offending field or None."""

    def __init__(self, field: str | None, why: str) -> None:
        super().__init__(f"{field} {why}" if field else why)
        self.field = field
        self.why = why


def validate_fields(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """The validated fields as stored with the job (unset optional fields left out).

    Raises SourceInvalid naming the first offending field.
    """
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        messages: dict[str, str] = getattr(model, "messages", {})
        if err["type"] == "extra_forbidden":
            raise SourceInvalid(None, f"has an unknown field {loc[-1]!r}") from None
        text = str(err["msg"]).removeprefix("Value error, ")
        if not loc:
            raise SourceInvalid(None, text) from None
        name = loc[0]
        why = messages.get(name) or (text if err["type"] == "value_error" else f"is invalid: {text}")
        raise SourceInvalid(name, why) from None
    return parsed.model_dump(mode="json", exclude_none=True)
