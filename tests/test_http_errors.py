"""Library errors carry codes only; the service's one table gives each code its HTTP status."""

from __future__ import annotations

import pytest

import blogqueue.errors as lib
import blogqueue.service.errors as svc
from blogqueue.errors import BacklogFull, BlogqueueError, InvalidInput, NotFound

# DESIGN §6's statuses, written out here so a change to the table must change this too.
EXPECTED = {
    lib.InvalidInput: 422, lib.NotFound: 404, lib.Conflict: 409, lib.InsufficientCredits: 402,
    lib.BacklogFull: 429, lib.Unavailable: 503, lib.BlogqueueError: 400,
    svc.MalformedJSON: 400, svc.Unauthorized: 401, svc.Forbidden: 403, svc.BodyTooLarge: 413,
}


def _make(cls: type[BlogqueueError]) -> BlogqueueError:
    return cls("x", retry_after=1) if cls is BacklogFull else cls("x")


def test_every_error_class_is_mapped() -> None:
    classes = {c for m in (lib, svc) for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, BlogqueueError)}
    assert classes == set(EXPECTED)
    for cls, status in EXPECTED.items():
        assert svc.status_for(_make(cls)) == status, cls


def test_library_errors_know_no_http_status() -> None:
    for cls in EXPECTED:
        assert not hasattr(_make(cls), "status"), cls


@pytest.mark.parametrize(("exc", "status"), [
    (InvalidInput("x", code="bad_slug"), 422),   # an application's own code keeps its class's status
    (NotFound("x", code="no_such_store"), 404),
    (BlogqueueError("x", code="teapot"), 400),
])
def test_unknown_codes_take_their_class_status(exc: BlogqueueError, status: int) -> None:
    assert svc.status_for(exc) == status
