"""The App: the one registry of job kinds, prompts, sources, publishers and providers (DESIGN §10).

    import blogqueue

    app = blogqueue.App()        # everything built in, registered through the calls below
    app.kind("faq", [("outline", outline), ("answers", answers)], sources=["keyword"])

`App()` registers the built-ins (kinds `blog_post` and `product_optimization`,
sources `keyword`/`product`/`tmdb`, publishers `none`/`webhook`/`wix`,
providers `offline`/`openai`/`anthropic`/`gemini`/`replicate`) with the same
public methods a user calls; registering a name again replaces it. The worker
runs, and the service validates against, the app it was started with
(`--app MODULE:ATTR` or `BLOGQUEUE_APP`, see `load`).

Read-only views for tools (the OpenAPI document, the CLI): `app.kinds` (name
-> `Kind`: `.stages`, `.stage_names`, `.sources`, `.credit_cost`, `.result`),
`app.sources` (name -> `Source`: `.fields`, a pydantic model of the submitted
fields, and `.json_schema()`), `app.publishers`, `app.providers` (name ->
`ProviderEntry`: `.needs_key`, `.limit_dimensions`), `app.prompts`.

Configuration: a source, publisher or provider registers `config`, a function
of the process's `Settings` returning that component's own configuration (the
built-ins take small frozen objects such as `WixConfig`); the component is
given only that, never the whole Settings with every secret.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .prompts import VERSION, Prompt
from .settings import Settings, SettingsError
from .sources import SourceInvalid, validate_fields

if TYPE_CHECKING:
    from .pipeline import Run
    from .providers.base import Provider

Stage = Callable[["Run"], Awaitable[dict[str, Any]]]
Result = Callable[["Run"], dict[str, Any]]
ConfigFactory = Callable[[Settings], Any]
Fetch = Callable[[dict[str, Any], Any, str], Awaitable[dict[str, Any]]]

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_DIMENSIONS = ("rpm", "tpm")


@dataclass(frozen=True)
class Kind:
    """A job kind: ordered stages, the source types it takes, its result and credit cost."""

    name: str
    stages: tuple[tuple[str, Stage], ...]
    sources: tuple[str, ...]
    result: Result | None = None
    credit_cost: int = 0

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)


@dataclass(frozen=True)
class Source:
    """A source type: its submitted fields (a pydantic model), how to fetch it, its config."""

    name: str
    fetch: Fetch
    fields: type[BaseModel]
    config: ConfigFactory | None = None

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The stored form of a submitted source (with `"type"`); raises SourceInvalid."""
        fields = {k: v for k, v in raw.items() if k != "type"}
        return {"type": self.name, **validate_fields(self.fields, fields)}

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the submitted object, `"type"` included (for the OpenAPI `Source`)."""
        schema = self.fields.model_json_schema()
        schema["properties"] = {"type": {"const": self.name}, **schema.get("properties", {})}
        schema["required"] = ["type", *schema.get("required", [])]
        schema["title"] = f"{self.name} source"
        return schema


@dataclass(frozen=True)
class PublisherEntry:
    name: str
    publisher: Any  # has publish(job, post, source, config) and write_back(job, rewrite, product, config)
    config: ConfigFactory | None = None


@dataclass(frozen=True)
class ProviderEntry:
    """A provider: its adapter factory, model-name check, keys and rate-limit dimensions.

    `needs_key`: calls need an API key (the user's stored key, else the
    platform key); keys can be stored for it through the AI settings.
    `limit_dimensions`: what the shared limiter meters for it (`rpm`, `tpm`,
    `itpm`, `otpm`); empty means its calls bypass the limiter (offline).
    """

    name: str
    factory: Callable[[Any], Provider]
    models: Callable[[str], None] | None = None
    platform_key: Callable[[Settings], str | None] | None = None
    needs_key: bool = True
    limit_dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    config: ConfigFactory | None = None

    def validate_model(self, name: str) -> None:
        if self.models is not None:
            self.models(name)
        elif not name:
            raise ValueError(f"{self.name} needs a model name after the colon")

    def platform_key_for(self, settings: Settings) -> str | None:
        return self.platform_key(settings) if self.platform_key is not None else None


class App:
    """The registry a deployment runs: see the module docstring."""

    def __init__(self, *, builtins: bool = True) -> None:
        self._kinds: dict[str, Kind] = {}
        self._sources: dict[str, Source] = {}
        self._publishers: dict[str, PublisherEntry] = {}
        self._providers: dict[str, ProviderEntry] = {}
        self._prompts: dict[str, Prompt] = {}
        self._built: dict[tuple[str, str], tuple[Settings, Any]] = {}
        # Read-only views of the registry (they follow later registrations).
        self.kinds: Mapping[str, Kind] = MappingProxyType(self._kinds)
        self.sources: Mapping[str, Source] = MappingProxyType(self._sources)
        self.publishers: Mapping[str, PublisherEntry] = MappingProxyType(self._publishers)
        self.providers: Mapping[str, ProviderEntry] = MappingProxyType(self._providers)
        self.prompts: Mapping[str, Prompt] = MappingProxyType(self._prompts)
        if builtins:
            _register_builtins(self)

    @property
    def key_providers(self) -> tuple[str, ...]:
        """Providers whose API keys users may store (every provider that needs a key)."""
        return tuple(sorted(n for n, p in self._providers.items() if p.needs_key))

    # -- registration --------------------------------------------------------------

    def kind(self, name: str, stages: Sequence[tuple[str, Stage]], *, sources: Iterable[str] = ("keyword",),
             result: Result | None = None, credit_cost: int | None = None) -> Kind:
        """Registers a job kind: `stages` in order, each `(stage_name, async fn(run) -> dict)`.

        Every stage's output is saved before the next starts (a retry resumes at
        the first unsaved stage). `sources` are the source types a job of this
        kind may carry. The job's result is `result(run)`, else the dict of stage
        outputs by stage name. `credit_cost` (default 0) is what a job reserves
        when credits are on; BLOGQUEUE_CREDIT_COSTS overrides it.
        """
        _check_name("kind", name)
        pairs = tuple(stages)
        if not pairs:
            raise ValueError(f"kind {name!r} needs at least one stage")
        seen: set[str] = set()
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
                raise ValueError(f"kind {name!r}: a stage is a (name, async function) pair, got {pair!r}")
            _check_name("stage", pair[0])
            if pair[0] in seen:
                raise ValueError(f"kind {name!r}: stage {pair[0]!r} appears twice")
            seen.add(pair[0])
        taken = tuple(dict.fromkeys(sources))
        unknown = [s for s in taken if s not in self._sources]
        if unknown or not taken:
            raise ValueError(f"kind {name!r}: sources must name registered sources "
                             f"({', '.join(sorted(self._sources))}), got {list(taken)!r}")
        cost = 0 if credit_cost is None else credit_cost
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            raise ValueError(f"kind {name!r}: credit_cost must be an integer of at least 0")
        self._kinds[name] = k = Kind(name, pairs, taken, result, cost)
        return k

    def source(self, name: str, fetch: Fetch, *, fields: type[BaseModel], kinds: Iterable[str] = (),
               config: ConfigFactory | None = None) -> Source:
        """Registers a source type: `fields` (a pydantic v2 model, e.g. a `blogqueue.SourceFields`
        subclass) validates what jobs submit; `async fetch(source, config, tenant_id) -> dict` is its
        stage output, which should carry a `"topic"` for the built-in kinds. `kinds` adds it to those
        registered kinds' accepted sources."""
        _check_name("source", name)
        if not (isinstance(fields, type) and issubclass(fields, BaseModel)):
            raise ValueError(f"source {name!r}: fields must be a pydantic model class")
        self._sources[name] = s = Source(name, fetch, fields, config)
        for kind in kinds:
            if kind not in self._kinds:
                raise ValueError(f"source {name!r}: no kind {kind!r} is registered")
            k = self._kinds[kind]
            if name not in k.sources:
                self._kinds[kind] = Kind(k.name, k.stages, (*k.sources, name), k.result, k.credit_cost)
        return s

    def publisher(self, name: str, publisher: Any, *, config: ConfigFactory | None = None) -> PublisherEntry:
        """Registers a publisher (see blogqueue.publishers); BLOGQUEUE_PUBLISHER picks one by name."""
        _check_name("publisher", name)
        for method in ("publish", "write_back"):
            if not callable(getattr(publisher, method, None)):
                raise ValueError(f"publisher {name!r} has no {method}() method")
        self._publishers[name] = p = PublisherEntry(name, publisher, config)
        return p

    def provider(self, name: str, factory: Callable[[Any], Provider], *,
                 models: Callable[[str], None] | None = None,
                 platform_key: Callable[[Settings], str | None] | None = None, needs_key: bool = True,
                 limit_dimensions: Sequence[str] | None = None, config: ConfigFactory | None = None) -> ProviderEntry:
        """Registers a provider named in models as `name:model`.

        `factory(config)` builds the adapter (blogqueue.providers.base.Provider)
        once per process; `models(model_name)` raises ValueError for a name it
        cannot serve; `platform_key(settings)` is the operator's key, used when
        the user stored none; `limit_dimensions` defaults to the adapter's
        `limit_dimensions` attribute, else ("rpm", "tpm").
        """
        _check_name("provider", name)
        dims = tuple(limit_dimensions if limit_dimensions is not None
                     else getattr(factory, "limit_dimensions", DEFAULT_DIMENSIONS))
        self._providers[name] = p = ProviderEntry(name, factory, models, platform_key, needs_key, dims, config)
        self._built.pop(("provider", name), None)
        return p

    def prompt(self, name: str, *, system: str, user: str, version: str = VERSION) -> Prompt:
        """Registers or replaces a prompt; stages read it with `run.prompt(name)`."""
        if not isinstance(name, str) or not name:
            raise ValueError("a prompt needs a name")
        self._prompts[name] = p = Prompt(system=system, user=user, version=version)
        return p

    # -- validation ----------------------------------------------------------------

    def validate_source(self, kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The stored form of a job's source; raises SourceInvalid (its `field` relative to the source)."""
        name = raw.get("type")
        if not isinstance(name, str) or name not in self._sources:
            raise SourceInvalid("type", f"must be one of {', '.join(sorted(self._sources))}")
        accepted = self._kinds[kind].sources
        if name not in accepted:
            raise SourceInvalid("type", f"{name!r} cannot feed a {kind} job (it takes {', '.join(accepted)})")
        return self._sources[name].validate(raw)

    def validate_model(self, model: str) -> tuple[str, str]:
        """(provider, model name) of `provider:model`; ValueError with a message for users otherwise."""
        provider, sep, name = model.partition(":")
        if not sep or not provider or not name:
            raise ValueError(f"model must look like provider:model, got {model!r}")
        if provider not in self._providers:
            raise ValueError(f"unknown provider {provider!r}; known: {', '.join(sorted(self._providers))}")
        self._providers[provider].validate_model(name)
        return provider, name

    def check(self, settings: Settings) -> None:
        """Fails at start, naming the variable, when settings name something this app lacks."""
        if settings.publisher not in self._publishers:
            raise SettingsError(f"BLOGQUEUE_PUBLISHER must be one of {', '.join(sorted(self._publishers))} "
                                f"(the publishers this app registers), got {settings.publisher!r}")
        for name, lim in settings.rate_limits.items():
            # Only dimensions the provider is limited on: a limit it never meters would be ignored.
            entry = self._providers.get(name.partition("#")[0])
            if entry is None:
                continue
            has = entry.limit_dimensions or tuple(getattr(entry.factory, "limit_dimensions", DEFAULT_DIMENSIONS))
            extra = [d for d in lim.dimensions() if d not in has]
            if extra:
                raise SettingsError(f"BLOGQUEUE_RATE_LIMITS: {entry.name} is limited on {', '.join(has)}, "
                                    f"not {', '.join(extra)}")
        unknown = sorted(set(settings.credit_costs) - set(self._kinds))
        if unknown:
            raise SettingsError(f"BLOGQUEUE_CREDIT_COSTS names {unknown[0]!r}, which is not a kind of this app "
                                f"({', '.join(self._kinds)})")

    def credit_cost(self, kind: str, settings: Settings) -> int:
        override = settings.credit_costs.get(kind)
        return int(override) if override is not None else self._kinds[kind].credit_cost

    # -- components at run time ----------------------------------------------------

    def _config(self, category: str, name: str, factory: ConfigFactory | None, settings: Settings) -> Any:
        key = (f"{category}-config", name)
        hit = self._built.get(key)
        if hit is None or hit[0] is not settings:
            hit = self._built[key] = (settings, factory(settings) if factory is not None else None)
        return hit[1]

    def build_provider(self, name: str, settings: Settings) -> Provider:
        """A new adapter for this provider, given its own configuration."""
        entry = self._providers[name]
        return entry.factory(entry.config(settings) if entry.config is not None else None)

    def provider_adapter(self, name: str, settings: Settings) -> Provider:
        """The process's adapter (adapters cache SDK clients per key: reusing one reuses connections)."""
        key = ("provider", name)
        hit = self._built.get(key)
        if hit is None or hit[0] is not settings:
            hit = self._built[key] = (settings, self.build_provider(name, settings))
        return hit[1]

    def publisher_for(self, settings: Settings) -> tuple[Any, Any]:
        """The deployment's publisher (BLOGQUEUE_PUBLISHER) and its configuration."""
        entry = self._publishers[settings.publisher]
        return entry.publisher, self._config("publisher", entry.name, entry.config, settings)

    async def fetch_source(self, source: Mapping[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]:
        """The source stage's output; `"source"` names the type, so prompts can pick their template."""
        entry = self._sources[source["type"]]
        config = self._config("source", entry.name, entry.config, settings)
        out = await entry.fetch(dict(source), config, tenant_id)
        return {**out, "source": entry.name}


class AppLoadError(SettingsError):
    """The app named by --app or BLOGQUEUE_APP cannot be loaded; the message names which."""


def load(spec: str | None, *, where: str = "BLOGQUEUE_APP") -> App:
    """The app `MODULE:ATTR` names (`where` is the option or variable it came from); App() for None.

    Like uvicorn, the current directory is importable, so `--app myplugin:app`
    works from a project's root without installing it.
    """
    if not spec:
        return App()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"{where} must look like MODULE:ATTR (e.g. myplugin:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"{where}={spec}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    try:
        obj: Any = attrgetter(attr)(module)
    except AttributeError:
        raise AppLoadError(f"{where}={spec}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise AppLoadError(f"{where}={spec}: {attr} is a {type(obj).__name__}, not a blogqueue.App")
    return obj


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"a {what} name must be 1-64 lowercase letters, digits or _ starting with a letter, "
                         f"got {name!r}")


def _endpoint(url_setting: str, make: Callable[[str | None, float], Any]) -> ConfigFactory:
    """A provider's own configuration: its base URL setting and the provider timeout, nothing else."""
    def config(settings: Settings) -> Any:
        return make(getattr(settings, url_setting), settings.provider_timeout_seconds)
    return config


def _register_builtins(app: App) -> None:
    """The built-ins, through the public API (one place: this is where they are listed)."""
    from .kinds import blog_post, product_optimization
    from .providers import anthropic, gemini, offline, openai, replicate
    from .providers.base import ProviderConfig
    from .publishers import none, webhook
    from .publishers import wix as wix_publisher
    from .sources import keyword, product, tmdb
    from .wix import config as wix_config

    app.source("keyword", keyword.fetch, fields=keyword.KeywordFields)
    app.source("product", product.fetch, fields=product.ProductFields, config=wix_config)
    app.source("tmdb", tmdb.fetch, fields=tmdb.TMDbFields, config=tmdb.config)

    app.publisher("none", none)
    app.publisher("webhook", webhook, config=webhook.WebhookConfig.from_settings)
    app.publisher("wix", wix_publisher, config=wix_config)

    app.provider("offline", offline.OfflineProvider, models=offline.validate, needs_key=False,
                 limit_dimensions=(),  # network-free: its simulated 429s go straight to the engine
                 config=lambda s: offline.OfflineConfig(s.offline_latency_ms, s.offline_call_log))
    for name, module, factory, key, url in (
            ("openai", openai, openai.OpenAIProvider, "openai_api_key", "openai_base_url"),
            ("anthropic", anthropic, anthropic.AnthropicProvider, "anthropic_api_key", "anthropic_base_url"),
            ("gemini", gemini, gemini.GeminiProvider, "gemini_api_key", "gemini_base_url"),
            ("replicate", replicate, replicate.ReplicateProvider, "replicate_api_token", "replicate_base_url")):
        app.provider(name, factory, models=module.validate, platform_key=attrgetter(key),
                     config=_endpoint(url, ProviderConfig))

    blog_post.register(app)
    product_optimization.register(app)
