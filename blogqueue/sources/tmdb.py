"""Movies or TV shows from a TMDb list (v3 API), filtered, as the subject of a roundup post.

`{"type": "tmdb", "list": "popular"|"top_rated"|"trending"|"now_playing",
  "media": "movie"|"tv", "min_rating": 7.5, "year_from": 2000, "year_to": 2024,
  "adult": false, "count": 5, "language": "en-US", "tone": "..."}`

Filters apply to the list's entries; up to MAX_PAGES pages are read to find
`count` titles. A list where nothing passes the filters fails the job (fatal).
"""

from __future__ import annotations

from typing import Any

from .. import remote
from ..errors import FatalError
from ..settings import Settings

KINDS = ("blog_post",)
FIELDS = {"type", "list", "media", "min_rating", "year_from", "year_to", "adult", "count", "language", "tone"}
LISTS = ("popular", "top_rated", "trending", "now_playing")
MEDIA = ("movie", "tv")
MAX_PAGES = 3
SERVICE = "TMDb"
LABELS = {"popular": "popular", "top_rated": "top rated", "trending": "trending", "now_playing": "now playing"}


def validate(source: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(source) - FIELDS)
    if unknown:
        raise ValueError(f"has an unknown field {unknown[0]!r}")
    out: dict[str, Any] = {"list": source.get("list", "popular"), "media": source.get("media", "movie")}
    if out["list"] not in LISTS:
        raise ValueError(f"list must be one of {', '.join(LISTS)}")
    if out["media"] not in MEDIA:
        raise ValueError(f"media must be one of {', '.join(MEDIA)}")
    rating = source.get("min_rating")
    if rating is not None:
        if not isinstance(rating, int | float) or isinstance(rating, bool) or not 0 <= rating <= 10:
            raise ValueError("min_rating must be a number from 0 to 10")
        out["min_rating"] = float(rating)
    for name in ("year_from", "year_to"):
        year = source.get(name)
        if year is not None:
            if not isinstance(year, int) or isinstance(year, bool) or not 1870 <= year <= 2200:
                raise ValueError(f"{name} must be a year from 1870 to 2200")
            out[name] = year
    if out.get("year_from", 0) > out.get("year_to", 9999):
        raise ValueError("year_from must not be after year_to")
    adult = source.get("adult", False)
    if not isinstance(adult, bool):
        raise ValueError("adult must be true or false")
    out["adult"] = adult
    count = source.get("count", 5)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 20:
        raise ValueError("count must be an integer from 1 to 20")
    out["count"] = count
    for name, limit in (("language", 20), ("tone", 50)):
        value = source.get(name)
        if value is not None:
            if not isinstance(value, str) or not 0 < len(value) <= limit:
                raise ValueError(f"{name} must be a string of 1 to {limit} characters")
            out[name] = value
    return out


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


async def fetch(source: dict[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]:
    if not settings.tmdb_api_key:
        raise FatalError("TMDb is not configured: set BLOGQUEUE_TMDB_API_KEY", code="missing_api_key")
    headers, auth = _auth(settings.tmdb_api_key)
    picked: list[dict[str, Any]] = []
    async with remote.client(settings, settings.tmdb_base_url, headers) as http:
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
