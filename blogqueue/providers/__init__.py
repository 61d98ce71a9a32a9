"""Provider adapters behind one interface (`base.Provider`), and model resolution.

A model is named `provider:model`. Resolution order: the job's model, then the
user's preferred model, then `DEFAULT_MODEL` (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Callable

from ..settings import Settings
from . import offline
from .base import CallContext, ImageRequest, ImageResult, Provider, TextRequest, TextResult

__all__ = ["CallContext", "ImageRequest", "ImageResult", "Provider", "TextRequest", "TextResult",
           "build", "split_model", "validate_model"]

Validator = Callable[[str], None]
Factory = Callable[[Settings], Provider]

# provider name -> (model-name check, factory). Adapters register here.
REGISTRY: dict[str, tuple[Validator, Factory]] = {
    "offline": (offline.validate, offline.OfflineProvider),
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
