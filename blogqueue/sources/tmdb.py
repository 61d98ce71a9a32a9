"""Movies or TV shows from a TMDb list (v3 API), filtered, as the subject of a roundup post.

`{"type": "tmdb", "list": "popular"|"top_rated"|"trending"|"now_playing",
  "media": "movie"|"tv", "min_rating": 7.5, "year_from": 2000, "year_to": 2024,
  "adult": false, "count": 5, "language": "en-US", "tone": "..."}`

Filters apply to the list's entries; up to MAX_PAGES pages are read to find
`count` titles. A list where nothing passes the filters fails the job (fatal).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .. import remote
from ..errors import FatalError
from ..settings import Settings
from . import SourceFields

LISTS = ("popular", "top_rated", "trending", "now_playing")
MEDIA = ("movie", "tv")
MAX_PAGES = 3
SERVICE = "TMDb"
LABELS = {"popular": "popular", "top_rated": "top rated", "trending": "trending", "now_playing": "now playing"}


def config(settings: Settings) -> remote.ServiceConfig:
    """What the tmdb source is given: TMDB_BASE_URL, TMDB_API_KEY and the timeout."""
    return remote.ServiceConfig(settings.tmdb_base_url, settings.tmdb_api_key, settings.http_timeout_seconds)


class TMDbFields(SourceFields):
    """A TMDb list, filtered: the subject of a roundup post."""

    list: Literal["popular", "top_rated", "trending", "now_playing"] = "popular"
    media: Literal["movie", "tv"] = "movie"
    min_rating: float | None = Field(None, ge=0, le=10)
    year_from: int | None = Field(None, ge=1870, le=2200)
    year_to: int | None = Field(None, ge=1870, le=2200)
    adult: bool = False
    count: int = Field(5, ge=1, le=20)
    language: str | None = Field(None, min_length=1, max_length=20, description="e.g. en-US (the default)")
    tone: str | None = Field(None, min_length=1, max_length=50, description="e.g. enthusiastic (the default)")

    messages: ClassVar[dict[str, str]] = {
        "list": f"must be one of {', '.join(LISTS)}",
        "media": f"must be one of {', '.join(MEDIA)}",
        "min_rating": "must be a number from 0 to 10",
        "year_from": "must be a year from 1870 to 2200",
        "year_to": "must be a year from 1870 to 2200",
        "adult": "must be true or false",
        "count": "must be an integer from 1 to 20",
        "language": "must be a string of 1 to 20 characters",
        "tone": "must be a string of 1 to 50 characters",
    }

    @model_validator(mode="after")
    def _years_in_order(self) -> TMDbFields:
        if self.year_from is not None and self.year_to is not None and self.year_from > self.year_to:
            raise ValueError("year_from must not be after year_to")
        return self


def _path(source: dict[str, Any]) -> str:
    media, name = source["media"], source["list"]
    if name == "trending":
        return f"/3/trending/{media}/week"
    if name == "now_playing" and media == "tv":
        return "/3/tv/on_the_air"  # TMDb's name for the TV list of what is airing now
    return f"/3/{media}/{name}"


def _auth(key: str) -> tuple[dict[str, str], dict[str, str]]:
    """A v4 read access token (a JWT) goes in a header; a v3 key is the api_key parameter."""
    if key.startswith("eyJ"):
        return {"Authorization": f"Bearer {key}"}, {}
    return {}, {"api_key": key}


def _passes(item: dict[str, Any], source: dict[str, Any]) -> bool:
    if item.get("adult") and not source["adult"]:
        return False
    if float(item.get("vote_average") or 0) < source.get("min_rating", 0):
        return False
    date = item.get("release_date") or item.get("first_air_date") or ""
    year = int(date[:4]) if date[:4].isdigit() else None
    if ("year_from" in source or "year_to" in source) and year is None:
        return False
    return year is None or source.get("year_from", 0) <= year <= source.get("year_to", 9999)


async def fetch(source: dict[str, Any], config: remote.ServiceConfig, tenant_id: str) -> dict[str, Any]:
    if not config.credential:
        raise FatalError("TMDb is not configured: set BLOGQUEUE_TMDB_API_KEY", code="missing_api_key")
    headers, auth = _auth(config.credential)
    picked: list[dict[str, Any]] = []
    async with remote.client(config.timeout_seconds, config.base_url, headers) as http:
        page, pages = 1, 1
        while page <= min(pages, MAX_PAGES) and len(picked) < source["count"]:
            params = {**auth, "page": str(page), "language": source.get("language", "en-US")}
            resp = await remote.send(http, SERVICE, "GET", _path(source), params=params)
            remote.check(resp, SERVICE)
            body = resp.json()
            pages = int(body.get("total_pages") or 1)
            picked += [_item(i) for i in body.get("results") or [] if _passes(i, source)]
            page += 1
    if not picked:
        raise FatalError(f"TMDb {LABELS[source['list']]} {source['media']} list: no title matches the filters "
                         f"({_describe(source)})", code="source_empty")
    picked = picked[:source["count"]]
    kind = "movies" if source["media"] == "movie" else "TV shows"
    return {"topic": f"{len(picked)} {LABELS[source['list']]} {kind} worth watching", "items": picked,
            "tone": source.get("tone", "enthusiastic"), "language": source.get("language", "en-US")[:2]}


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    date = raw.get("release_date") or raw.get("first_air_date") or ""
    return {"id": raw.get("id"), "title": raw.get("title") or raw.get("name") or "untitled",
            "year": date[:4] or None, "rating": raw.get("vote_average"),
            "overview": (raw.get("overview") or "")[:600]}


def _describe(source: dict[str, Any]) -> str:
    parts = [f"min_rating {source['min_rating']}" if "min_rating" in source else "",
             f"years {source.get('year_from', '…')}-{source.get('year_to', '…')}"
             if "year_from" in source or "year_to" in source else "",
             "adult allowed" if source["adult"] else "adult excluded"]
    return ", ".join(p for p in parts if p)
