"""Provider adapters behind one interface (`base.Provider`), and model resolution.

A model is named `provider:model`. Resolution order: the job's model, then the
user's preferred model, then `DEFAULT_MODEL` (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Callable

from ..settings import Settings
from . import anthropic, gemini, offline, openai, replicate
from .base import CallContext, ImageRequest, ImageResult, Provider, RateInfo, TextRequest, TextResult

__all__ = ["CallContext", "ImageRequest", "ImageResult", "Provider", "RateInfo", "TextRequest", "TextResult",
           "build", "get", "split_model", "validate_model"]

Validator = Callable[[str], None]
Factory = Callable[[Settings], Provider]

# provider name -> (model-name check, factory). Adapters register here.
REGISTRY: dict[str, tuple[Validator, Factory]] = {
    "offline": (offline.validate, offline.OfflineProvider),
    "openai": (openai.validate, openai.OpenAIProvider),
    "anthropic": (anthropic.validate, anthropic.AnthropicProvider),
    "gemini": (gemini.validate, gemini.GeminiProvider),
    "replicate": (replicate.validate, replicate.ReplicateProvider),
}


def split_model(model: str) -> tuple[str, str]:
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name:
        raise ValueError(f"model must look like provider:model, got {model!r}")
    return provider, name


def validate_model(model: str) -> None:
    """Raises ValueError with a message for users if the model cannot be served."""
    provider, name = split_model(model)
    if provider not in REGISTRY:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(sorted(REGISTRY))}")
    REGISTRY[provider][0](name)


def build(provider: str, settings: Settings) -> Provider:
    return REGISTRY[provider][1](settings)


_built: dict[tuple[str, int], tuple[Settings, Provider]] = {}


def get(provider: str, settings: Settings) -> Provider:
    """The process's adapter for this provider and settings object.

    Adapters cache their SDK clients per API-key hash, so reusing the adapter
    reuses connection pools instead of opening a client per call.
    """
    k = (provider, id(settings))
    hit = _built.get(k)
    if hit is None or hit[0] is not settings:
        hit = _built[k] = (settings, build(provider, settings))
    return hit[1]
