"""A keyword or topic given by the user: `{"type": "keyword", "keyword": "...", "tone": ..., "language": ...}`."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from . import SourceFields


class KeywordFields(SourceFields):
    """A topic for a blog post, with an optional tone and language."""

    keyword: str = Field(min_length=1, max_length=300, description="the topic, 1-300 characters")
    tone: str | None = Field(None, max_length=50, description="e.g. friendly (the default)")
    language: str | None = Field(None, max_length=50, description="e.g. en (the default)")

    messages: ClassVar[dict[str, str]] = {
        "keyword": "must be a non-empty string of at most 300 characters",
        "tone": "must be a string of at most 50 characters",
        "language": "must be a string of at most 50 characters",
    }

    @field_validator("keyword")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return value.strip()


async def fetch(source: dict[str, Any], config: None, tenant_id: str) -> dict[str, Any]:
    return {"topic": source["keyword"], "tone": source.get("tone", "friendly"),
            "language": source.get("language", "en")}
