"""Which model and which API key a job's provider calls use (DESIGN §5).

Model: the job's model, then the user's preferred model, then DEFAULT_MODEL.
Key: the user's stored key for that provider, then the platform key the app
registered for it (`App.provider(..., platform_key=...)`), then a fatal
`missing_api_key`. A provider registered with `needs_key=False` (offline) needs no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from . import aisettings, secrets
from .errors import FatalError
from .settings import Settings

if TYPE_CHECKING:
    from .app import App


@dataclass(frozen=True)
class Resolved:
    provider: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def full_model(self) -> str:
        return f"{self.provider}:{self.model}"


async def resolve(job: dict[str, Any], settings: Settings, pool: asyncpg.Pool, app: App, *,
                  stored: tuple[str | None, dict[str, str]] | None = None) -> Resolved:
    """`stored`: the user's preferred model and stored keys when the caller read them already
    (the worker's claim does, to spare a round trip per job); else they are read here."""
    preferred, keys = stored if stored is not None else await aisettings.stored(pool, job["tenant_id"],
                                                                                 job.get("user_id"))
    model = job.get("model") or preferred or settings.default_model
    try:
        provider, name = app.validate_model(model)
    except ValueError as exc:
        raise FatalError(f"model cannot be used: {exc}", code="invalid_model") from None
    entry = app.providers[provider]
    if not entry.needs_key:
        return Resolved(provider, name)
    if provider in keys:
        who = aisettings.owner(job["tenant_id"], job.get("user_id"), provider)
        try:
            return Resolved(provider, name, secrets.decrypt(settings, keys[provider], who))
        except (secrets.DecryptError, secrets.SecretKeyMissing):
            raise FatalError(f"your stored {provider} key cannot be read on this server (its SECRET_KEY "
                             f"changed): store the key again in your AI settings", code="bad_api_key") from None
    key = entry.platform_key_for(settings)
    if not key:
        raise FatalError(f"no API key for {provider}: add one in your AI settings or ask the operator "
                         f"to configure the platform key", code="missing_api_key")
    return Resolved(provider, name, key)
