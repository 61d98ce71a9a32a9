"""Apps the tests load into real worker and service processes (`--app tests.apps:NAME`)."""

from __future__ import annotations

import os

import blogqueue
from blogqueue.providers import ProviderConfig
from blogqueue.providers.openai import OpenAIProvider

# A built-in prompt replaced through the app: the provider must receive this text.
MARKER = "[replaced-prompt-7]"
prompt_app = blogqueue.App()
prompt_app.prompt("blog_post/keyword", version="test-replaced-1",
                  system="You write very short posts in {language}, in a {tone} tone. Start with a '# ' title line.",
                  user=f"Write three sentences.\nTopic: {MARKER} {{topic}}")


class AcmeProvider(OpenAIProvider):
    """An OpenAI-compatible API under another name: a provider a user adds."""

    name = "acme"


def _acme_models(name: str) -> None:
    if not name.startswith("gpt-"):
        raise ValueError(f"acme serves gpt-* models, got {name!r}")


# A provider added through the app: stored user keys, a platform key and the shared limiter apply.
provider_app = blogqueue.App()
provider_app.provider("acme", AcmeProvider, models=_acme_models,
                      platform_key=lambda s: os.environ.get("ACME_PLATFORM_KEY"),
                      config=lambda s: ProviderConfig(os.environ.get("ACME_BASE_URL"), s.provider_timeout_seconds))

not_an_app = object()


# A kind whose one stage makes two paid calls (per-call replay, the batch lane).
async def _two_calls(run: blogqueue.Run) -> dict[str, str]:
    kw = run.spec["source"]["keyword"]
    first = await run.text(system="You answer briefly.", prompt=f"Topic: first {kw}", max_tokens=40)
    second = await run.text(system="You answer briefly.", prompt=f"Topic: second {kw}", max_tokens=40)
    return {"first": first.text, "second": second.text}


two_call_app = blogqueue.App()
two_call_app.kind("two_calls", [("both", _two_calls)], sources=["keyword"])
