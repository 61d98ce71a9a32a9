"""A Replicate predictions API fake, for the real `replicate` SDK.

`POST /v1/models/{owner}/{name}/predictions` and `POST /v1/predictions`
(by version) answer a finished prediction (sync mode, `Prefer: wait`) whose
output is an image URL; `GET /v1/predictions/{id}` reads it back. Prompts
containing `[refuse]` end `failed` with Replicate's NSFW error. Errors are
RFC 7807 problem details, as Replicate's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fakeserver import FakeServer, bearer


class FakeReplicate(FakeServer):
    name = "fake-replicate"

    def __init__(self, **kwargs: Any) -> None:
        self.predictions: dict[str, dict[str, Any]] = {}
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return self.url

    def routes(self) -> list[Route]:
        return [Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"])]

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        path = request.url.path
        fault = await self.misbehave(bearer(request))
        problems = {"401": (401, "Unauthenticated", "You did not pass a valid authentication token"),
                    "403": (403, "Forbidden", "You do not have permission to use this model"),
                    "400": (422, "Input validation failed", "input.prompt is required"),
                    "500": (500, "Internal server error", "Something went wrong"),
                    "timeout": (504, "Gateway timeout", "timeout"),
                    "429": (429, "Request was throttled",
                            f"Request was throttled. Expected available in {self.faults.retry_after_s:g} second.")}
        if fault in problems:
            status, title, detail = problems[fault]
            self.record(path, status)
            headers = {"retry-after": f"{self.faults.retry_after_s:g}"} if status == 429 else {}
            return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status,
                                headers=headers)
        prompt = str((body.get("input") or {}).get("prompt", ""))
        refuse = "[refuse]" in prompt or fault == "refuse"
        pid = uuid.uuid4().hex[:26]
        model = f"{request.path_params['owner']}/{request.path_params['name']}" if "owner" in request.path_params \
            else "unknown/model"
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        pred = {"id": pid, "model": model, "version": body.get("version", "hidden"), "input": body.get("input"),
                "status": "failed" if refuse else "succeeded",
                "output": None if refuse else [f"{self.url}/files/{pid}.webp"],
                "error": "NSFW content detected. Try running it again, or try a different prompt." if refuse else None,
                "logs": "", "metrics": {"predict_time": 0.01}, "created_at": now, "started_at": now,
                "completed_at": now, "urls": {"get": f"{self.url}/v1/predictions/{pid}",
                                              "cancel": f"{self.url}/v1/predictions/{pid}/cancel"}}
        self.predictions[pid] = pred
        self.record(path, 201)
        return JSONResponse(pred, status_code=201)

    async def _get(self, request: Request) -> Response:
        pred = self.predictions.get(request.path_params["id"])
        if pred is None:
            return JSONResponse({"title": "Not found", "detail": "Not found", "status": 404}, status_code=404)
        return JSONResponse(pred)
