"""The one settings object.

Library code never reads the environment: entry points build a `Settings` with
`Settings.from_env()` and pass it down. Every variable has the `BLOGQUEUE_`
prefix; a bad value fails at start with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "BLOGQUEUE_"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DIMENSIONS = ("rpm", "tpm", "itpm", "otpm")


@dataclass(frozen=True)
class RateLimit:
    """Per-minute limits of one provider (or one bucket), one per dimension. None means unlimited.

    `rpm` requests, `tpm` tokens (prompt + completion: OpenAI, Gemini), `itpm` input and `otpm`
    output tokens (Anthropic). Which dimensions a provider has is its adapter's `limit_dimensions`.
    """

    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None

    def dimensions(self) -> dict[str, int]:
        """The limited dimensions and their per-minute limits."""
        return {d: v for d in DIMENSIONS if (v := getattr(self, d)) is not None}


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/blogqueue"
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "blogqueue"

    secret_key: str | None = field(default=None, repr=False)
    default_model: str = "offline:template"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_base_url: str | None = None
    replicate_api_token: str | None = field(default=None, repr=False)
    replicate_base_url: str | None = None

    worker_concurrency: int = 20
    retry_schedule: tuple[float, ...] = (10.0, 60.0, 300.0)
    retry_jitter: float = 0.1
    max_inflight_per_tenant: int = 20
    max_backlog: int = 100_000
    max_tenant_backlog: int = 10_000
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)

    # Which of the app's publishers this deployment uses; checked against the app at start
    # (blogqueue.App.check), since an app may register its own.
    publisher: str = "none"
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    # Engine tuning: not in the public contract's list, documented in the README.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    status_log_seconds: float = 30.0
    dispatch_poll_seconds: float = 1.0
    dispatch_prefetch: int = 2
    job_timeout_seconds: float = 900.0
    shutdown_grace_seconds: int = 10
    db_pool_size: int = 10
    offline_latency_ms: float = 0.0
    offline_call_log: str | None = None
    max_batch_size: int = 10_000
    log_level: str = "INFO"
    log_format: str = "console"
    # HTTP service (docs/http.md)
    max_body_bytes: int = 5 * 1024 * 1024
    max_json_depth: int = 32
    metrics_top_tenants: int = 10
    ready_timeout_seconds: float = 1.0
    # The event stream (GET /v1/events, blogqueue.events): comment heartbeats, the shared poller's
    # period (the stream's latency), and how many events one reader may fall behind before it is
    # disconnected (it resumes with Last-Event-ID).
    events_heartbeat_seconds: float = 15.0
    events_poll_seconds: float = 0.1
    events_buffer: int = 1000
    # Verified API tokens are cached per process this long: the bound on how long a revoked
    # token still works (blogqueue.tokens.TokenCache); 0 looks every request up.
    token_cache_seconds: float = 5.0
    token_cache_size: int = 10_000
    # Job views (GET /v1/jobs/{id}) are cached per process, invalidated by the event stream
    # (blogqueue.jobviews): this is the bound on changes that write no event; 0 reads every view.
    job_cache_seconds: float = 5.0
    job_cache_bytes: int = 16 * 1024 * 1024

    # Sources, publishers and credits (docs/sources-publishers-credits.md).
    wix_base_url: str = "https://www.wixapis.com"
    wix_api_token: str | None = field(default=None, repr=False)
    # App mode (issue 18): a Wix app installed on many sites, one OAuth token per installation.
    wix_app_id: str | None = None
    wix_app_secret: str | None = field(default=None, repr=False)
    wix_public_key: str | None = field(default=None, repr=False)  # PEM, verifies Wix's webhooks; long, not secret
    tmdb_base_url: str = "https://api.themoviedb.org"
    tmdb_api_key: str | None = field(default=None, repr=False)
    http_timeout_seconds: float = 30.0
    credits_enabled: bool = False
    # Overrides of the kinds' registered costs (blog_post 25, product_optimization 5); kinds
    # not named keep theirs. Names are checked against the app at start (App.check).
    credit_costs: Mapping[str, int] = field(default_factory=dict)
    # The user's app, MODULE:ATTR (blogqueue.app.load); None runs the built-in App().
    app: str | None = None

    # Providers, AI settings and the shared rate limiter (issue 5; docs/providers.md).
    provider_timeout_seconds: float = 60.0
    rate_limit_max_wait_seconds: float = 30.0
    # The limiter's own burst, in seconds of each limit (ratelimit.py explains the 0.25 s default).
    rate_limit_burst_seconds: float = 0.25
    secret_key_previous: str | None = field(default=None, repr=False)

    # The batch lane (DESIGN §11, docs/batch-lane.md).
    default_lane: str = "now"
    batch_window_seconds: float = 60.0      # a collector flushes this long after its oldest request...
    batch_max_requests: int = 1000          # ...or at this many requests, whichever first
    batch_poll_seconds: float = 30.0        # first poll of a submitted batch; later ones back off x1.5
    batch_poll_max_seconds: float = 600.0
    batch_credit_percent: int = 50          # a batch-lane job's credit cost, in % of the kind's cost
    batch_price_ratio: float = 0.5          # provider price of a batch call vs a synchronous one (metrics)
    # Enqueued tokens one (provider, key, model) may have in open batches (OpenAI's batch queue
    # limit); 0: unlimited. Batches are cut to fit.
    batch_queue_tokens: int = 0
    offline_batch_seconds: float = 2.0      # how long the offline provider's simulated batches take

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, f.name, raw)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("WORKER_CONCURRENCY", self.worker_concurrency >= 1, "must be at least 1"),
            ("MAX_INFLIGHT_PER_TENANT", self.max_inflight_per_tenant >= 1, "must be at least 1"),
            ("MAX_BACKLOG", self.max_backlog >= 1, "must be at least 1"),
            ("MAX_TENANT_BACKLOG", self.max_tenant_backlog >= 1, "must be at least 1"),
            ("LEASE_SECONDS", self.lease_seconds > 0, "must be positive"),
            ("HEARTBEAT_SECONDS", 0 < self.heartbeat_seconds < self.lease_seconds,
             "must be positive and shorter than BLOGQUEUE_LEASE_SECONDS"),
            ("RETRY_JITTER", 0 <= self.retry_jitter < 1, "must be in [0, 1)"),
            ("DISPATCH_PREFETCH", self.dispatch_prefetch >= 0, "must not be negative"),
            ("DB_POOL_SIZE", self.db_pool_size >= 2, "must be at least 2"),
            ("PUBLISHER", bool(NAME.match(self.publisher)), "must be a publisher name such as none, webhook or wix"),
            ("APP", self.app is None or bool(APP_SPEC.match(self.app)), "must look like MODULE:ATTR"),
            ("QUEUE_NAME", bool(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.queue_name)),
             "must be 1-64 characters of letters, digits, _ . : -"),
            ("DEFAULT_MODEL", ":" in self.default_model, "must look like provider:model"),
            ("PROVIDER_TIMEOUT_SECONDS", self.provider_timeout_seconds > 0, "must be positive"),
            ("RATE_LIMIT_MAX_WAIT_SECONDS", self.rate_limit_max_wait_seconds >= 0, "must not be negative"),
            ("RATE_LIMIT_BURST_SECONDS", 0 < self.rate_limit_burst_seconds <= 60,
             "must be more than 0 and at most 60 (seconds of each limit granted at once)"),
            ("LOG_FORMAT", self.log_format in ("console", "json"), "must be console or json"),
            ("MAX_BODY_BYTES", self.max_body_bytes >= 1024, "must be at least 1024"),
            ("MAX_JSON_DEPTH", 4 <= self.max_json_depth <= 500, "must be from 4 to 500"),
            ("METRICS_TOP_TENANTS", self.metrics_top_tenants >= 1, "must be at least 1"),
            ("READY_TIMEOUT_SECONDS", self.ready_timeout_seconds > 0, "must be positive"),
            ("EVENTS_HEARTBEAT_SECONDS", self.events_heartbeat_seconds > 0, "must be positive"),
            ("EVENTS_POLL_SECONDS", 0 < self.events_poll_seconds <= 10, "must be more than 0 and at most 10"),
            ("EVENTS_BUFFER", self.events_buffer >= 1, "must be at least 1"),
            ("TOKEN_CACHE_SECONDS", 0 <= self.token_cache_seconds <= 300, "must be from 0 to 300"),
            ("TOKEN_CACHE_SIZE", self.token_cache_size >= 1, "must be at least 1"),
            ("JOB_CACHE_SECONDS", 0 <= self.job_cache_seconds <= 60, "must be from 0 to 60"),
            ("JOB_CACHE_BYTES", self.job_cache_bytes >= 65_536, "must be at least 65536 (one large view)"),
            ("LOG_LEVEL", self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
             "must be DEBUG, INFO, WARNING or ERROR"),
        ]
        checks += [
            ("HTTP_TIMEOUT_SECONDS", self.http_timeout_seconds > 0, "must be positive"),
            ("DEFAULT_LANE", self.default_lane in ("now", "batch"), "must be now or batch"),
            ("BATCH_WINDOW_SECONDS", self.batch_window_seconds >= 0, "must not be negative"),
            ("BATCH_MAX_REQUESTS", 1 <= self.batch_max_requests <= 50_000, "must be from 1 to 50000"),
            ("BATCH_POLL_SECONDS", 0 < self.batch_poll_seconds <= self.batch_poll_max_seconds,
             "must be positive and at most BLOGQUEUE_BATCH_POLL_MAX_SECONDS"),
            ("BATCH_CREDIT_PERCENT", 0 <= self.batch_credit_percent <= 100, "must be from 0 to 100"),
            ("BATCH_PRICE_RATIO", 0 <= self.batch_price_ratio <= 1, "must be from 0 to 1"),
            ("BATCH_QUEUE_TOKENS", self.batch_queue_tokens >= 0, "must not be negative"),
            ("OFFLINE_BATCH_SECONDS", self.offline_batch_seconds >= 0, "must not be negative"),
            ("CREDIT_COSTS", all(isinstance(v, int) and v >= 0 for v in self.credit_costs.values()),
             "costs must be integers of at least 0"),
        ]
        for var, ok, why in checks:
            if not ok:
                raise SettingsError(f"{PREFIX}{var} {why}")
        if bool(self.wix_app_id) != bool(self.wix_app_secret):  # a half-configured Wix app mode
            have, missing = ("WIX_APP_ID", "WIX_APP_SECRET") if self.wix_app_id else ("WIX_APP_SECRET", "WIX_APP_ID")
            raise SettingsError(f"{PREFIX}{missing} must be set together with {PREFIX}{have} (Wix app mode)")
        if self.wix_public_key and "BEGIN PUBLIC KEY" not in self.wix_public_key:
            raise SettingsError(f"{PREFIX}WIX_PUBLIC_KEY must be the app's public key in PEM form")
        if not self.database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError(f"{PREFIX}DATABASE_URL must be a postgresql:// URL")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"{PREFIX}REDIS_URL must be a redis://, rediss:// or unix:// URL")

    def to_env(self) -> dict[str, str]:
        """The environment that `from_env` reads back into these settings (for child processes)."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "retry_schedule":
                value = ",".join(format(v, "g") for v in value)
            elif f.name == "rate_limits":
                value = ";".join(f"{p}:" + ",".join(f"{k}={n}" for k, n in lim.dimensions().items())
                                 for p, lim in value.items())
            elif f.name == "credit_costs":
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif f.name == "credits_enabled":
                value = "true" if value else "false"
            env[PREFIX + f.name.upper()] = str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def only_secrets(self, *keep: str) -> Settings:
        """A copy with every secret (the fields kept out of `repr`) blanked but the ones named.

        For components that need the infrastructure settings (Redis, PostgreSQL, limits)
        but must not hold every other component's secrets.
        """
        blank: dict[str, Any] = {f.name: None for f in dataclasses.fields(self) if not f.repr and f.name not in keep}
        return dataclasses.replace(self, **blank)

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule) + 1

    def rate_limit(self, provider: str) -> RateLimit:
        return self.rate_limits.get(provider, RateLimit())


_INT_FIELDS = {
    "worker_concurrency", "max_inflight_per_tenant", "max_backlog", "max_tenant_backlog",
    "dispatch_prefetch", "shutdown_grace_seconds", "db_pool_size", "max_batch_size",
    "max_body_bytes", "max_json_depth", "metrics_top_tenants", "events_buffer", "token_cache_size",
    "job_cache_bytes",
    "batch_max_requests", "batch_credit_percent", "batch_queue_tokens",
}
_FLOAT_FIELDS = {
    "retry_jitter", "lease_seconds", "heartbeat_seconds", "status_log_seconds",
    "dispatch_poll_seconds", "job_timeout_seconds", "offline_latency_ms", "http_timeout_seconds",
    "ready_timeout_seconds", "provider_timeout_seconds", "rate_limit_max_wait_seconds",
    "rate_limit_burst_seconds", "token_cache_seconds", "job_cache_seconds", "events_heartbeat_seconds",
    "events_poll_seconds",
    "batch_window_seconds", "batch_poll_seconds", "batch_poll_max_seconds",
    "batch_price_ratio", "offline_batch_seconds",
}


def _parse(var: str, name: str, raw: str) -> Any:
    try:
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            return float(raw)
        if name == "retry_schedule":
            return parse_retry_schedule(raw)
        if name == "rate_limits":
            return parse_rate_limits(raw)
        if name == "credit_costs":
            return parse_credit_costs(raw)
        if name == "credits_enabled":
            return parse_bool(raw)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{var}: {exc}") from None
    return raw


def parse_retry_schedule(raw: str) -> tuple[float, ...]:
    """`10,60,300` → (10.0, 60.0, 300.0); an empty schedule means one attempt."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    delays = tuple(float(p) for p in parts)
    if any(d < 0 for d in delays):
        raise ValueError(f"delays must not be negative, got {raw!r}")
    return delays


def parse_rate_limits(raw: str) -> dict[str, RateLimit]:
    """`openai:rpm=500,tpm=200000;anthropic:rpm=50,itpm=40000,otpm=8000;replicate:rpm=600` → {provider: RateLimit}.

    `provider#<key hash prefix>:...` sets the limits of one bucket. Whether the provider has the
    dimension is checked against the provider when the app starts (`App.check`).
    """
    limits: dict[str, RateLimit] = {}
    for entry in filter(None, (e.strip() for e in raw.split(";"))):
        provider, sep, spec = entry.partition(":")
        if not sep or not provider.strip():
            raise ValueError(f"expected provider:rpm=N,tpm=N, got {entry!r}")
        values: dict[str, int] = {}
        for item in filter(None, (i.strip() for i in spec.split(","))):
            key, eq, num = item.partition("=")
            if not eq or key.strip() not in DIMENSIONS:
                raise ValueError(f"expected {', '.join(d + '=N' for d in DIMENSIONS)}, got {item!r}")
            n = int(num)
            if n <= 0:
                raise ValueError(f"{key.strip()} must be positive, got {n}")
            values[key.strip()] = n
        limits[provider.strip()] = RateLimit(**values)
    return limits


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_credit_costs(raw: str) -> dict[str, int]:
    """`blog_post=25,product_optimization=5`; kinds not named keep the cost their kind registered."""
    costs: dict[str, int] = {}
    for item in filter(None, (i.strip() for i in raw.split(","))):
        kind, eq, num = item.partition("=")
        if not eq or not NAME.match(kind.strip()):
            raise ValueError(f"expected kind=N (a kind name, e.g. blog_post=25), got {item!r}")
        n = int(num)
        if n < 0:
            raise ValueError(f"cost must not be negative, got {n}")
        costs[kind.strip()] = n
    return costs
