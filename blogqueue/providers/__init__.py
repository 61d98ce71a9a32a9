"""Provider adapters behind one interface (`base.Provider`), one module each.

The app registers them (`blogqueue.App.provider`: adapter factory, model-name
check, platform key, rate-limit dimensions, own configuration); a model is
named `provider:model`. Resolution order: the job's model, then the user's
preferred model, then `DEFAULT_MODEL` (DESIGN §5, blogqueue.resolve).
"""

from __future__ import annotations

from .base import (
    CallContext,
    ImageRequest,
    ImageResult,
    Provider,
    ProviderConfig,
    RateInfo,
    TextRequest,
    TextResult,
)

__all__ = ["CallContext", "ImageRequest", "ImageResult", "Provider", "ProviderConfig", "RateInfo", "TextRequest",
           "TextResult"]
