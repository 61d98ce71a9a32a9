"""A fake TMDb v3 API: the list endpoints blogqueue reads, 20 results a page, auth checked."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .fakeserver import CallLog, FakeServer

PAGE = 20
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


def sample(media: str, n: int = 30, *, start_year: int = 1990, adult_every: int = 7) -> list[dict[str, Any]]:
    """Deterministic entries: ratings 5.0..9.9, years rising, every `adult_every`th one adult."""
    date_key, name_key = ("release_date", "title") if media == "movie" else ("first_air_date", "name")
    return [{"id": 1000 + i, name_key: f"{media.title()} {i}", "overview": f"The story of {media} number {i}.",
             "vote_average": round(5.0 + (i * 0.7) % 5, 1), date_key: f"{start_year + i}-06-01",
             "adult": adult_every > 0 and i % adult_every == adult_every - 1}
            for i in range(n)]


class FakeTMDb(FakeServer):
    name = "fake-tmdb"

    def __init__(self, api_key: str, lists: dict[tuple[str, str], list[dict[str, Any]]] | None = None) -> None:
        super().__init__()
        self.calls = CallLog()  # also counts by route: `calls[("GET", "/3/movie/popular")]`
        self.api_key = api_key
        self.lists = lists if lists is not None else {
            (media, name): sample(media) for media in ("movie", "tv")
            for name in ("popular", "top_rated", "trending", "now_playing")}

    def _list(self, path: str) -> tuple[str, str] | None:
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["3", "trending"] and parts[2] in ("movie", "tv"):
            return parts[2], "trending"
        if len(parts) == 3 and parts[0] == "3" and parts[1] in ("movie", "tv"):
            name = {"on_the_air": "now_playing"}.get(parts[2], parts[2])
            if name == "now_playing" and parts[1] == "tv" and parts[2] == "now_playing":
                return None  # TMDb has no /tv/now_playing
            return parts[1], name
        return None

    def routes(self) -> list[Route]:
        return [Route("/3/{rest:path}", self._api, methods=METHODS)]

    async def _api(self, request: Request) -> Response:
        req = await self.capture(request)
        status, body = self._reply(req.query, req.headers, req.path)
        self.record(req.path, status, method=req.method)
        return await self.answer(status, body)

    def _reply(self, query: dict[str, str], headers: dict[str, str], path: str) -> tuple[int, dict[str, Any]]:
        key = query.get("api_key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            return 401, {"status_code": 7, "status_message": "Invalid API key: You must be granted a valid key.",
                         "success": False}
        found = self._list(path)
        if found is None or found not in self.lists:
            return 404, {"status_code": 34, "status_message": "The resource you requested could not be found.",
                         "success": False}
        items = self.lists[found]
        page = int(query.get("page", "1"))
        pages = max(1, -(-len(items) // PAGE))
        return 200, {"page": page, "results": items[(page - 1) * PAGE:page * PAGE],
                     "total_pages": pages, "total_results": len(items)}
