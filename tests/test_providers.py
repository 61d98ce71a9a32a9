"""Each adapter through its real SDK against its fake server: success, usage, every error class, a timeout."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from blogqueue.app import App
from blogqueue.errors import FatalError, RateLimited, RetryableError
from blogqueue.providers import CallContext, ImageRequest, TextRequest
from blogqueue.settings import Settings
from blogqueue.testing.fake_anthropic import FakeAnthropic
from blogqueue.testing.fake_gemini import FakeGemini
from blogqueue.testing.fake_openai import FakeOpenAI
from blogqueue.testing.fake_replicate import FakeReplicate

KEY = "sk-test-SECRETabcdef123456"
CTX = CallContext(job_id="j1", attempt=1, stage="content", tenant_id="t1")


@dataclass
class Case:
    provider: str
    model: str
    fake: type
    url_field: str
    text: bool = True
    image: bool = True


CASES = [
    Case("openai", "gpt-4o-mini", FakeOpenAI, "openai_base_url"),
    Case("anthropic", "claude-3-5-sonnet-latest", FakeAnthropic, "anthropic_base_url", image=False),
    Case("gemini", "gemini-2.0-flash", FakeGemini, "gemini_base_url", image=False),
    Case("replicate", "black-forest-labs/flux-schnell", FakeReplicate, "replicate_base_url", text=False),
]


@pytest.fixture(params=CASES, ids=lambda c: c.provider)
def case(request: pytest.FixtureRequest) -> Any:
    c: Case = request.param
    fake = c.fake(retry_after_s=2.0, hang_s=3.0).start()
    settings = Settings(provider_timeout_seconds=1.0, **{c.url_field: fake.base_url})
    yield c, fake, App().build_provider(c.provider, settings)
    fake.stop()


async def call(c: Case, adapter: Any, prompt: str = "Topic: green tea") -> Any:
    if c.text:
        return await adapter.generate_text(TextRequest(model=c.model, prompt=prompt, system="Be brief.",
                                                       max_tokens=40), KEY, CTX)
    return await adapter.generate_image(ImageRequest(model=c.model, prompt=prompt), KEY, CTX)


async def test_success_reports_usage(case: Any) -> None:
    c, fake, adapter = case
    result = await call(c, adapter)
    if c.text:
        assert result.text.startswith("# A fake post")
        assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 40
        assert result.model == f"{c.provider}:{c.model}"
    else:
        assert result.url.startswith(fake.url) and result.model == f"{c.provider}:{c.model}"
    if c.image and c.text:
        image = await adapter.generate_image(ImageRequest(model=c.model, prompt="a teapot"), KEY, CTX)
        assert image.url.startswith("http://127.0.0.1")
    assert fake.stats()["by_status"].get("200", 0) + fake.stats()["by_status"].get("201", 0) == 1 + c.image * c.text


@pytest.mark.parametrize("answer, error, code", [
    ("401", FatalError, "bad_api_key"),
    ("403", FatalError, "bad_api_key"),
    ("400", FatalError, "invalid_request"),
    ("500", RetryableError, "provider_error"),
    ("refuse", FatalError, "content_refused"),
    ("429", RateLimited, "rate_limited"),
])
async def test_errors_map_to_the_engine_classes(case: Any, answer: str, error: type, code: str) -> None:
    c, fake, adapter = case
    fake.script(answer)
    with pytest.raises(error) as info:
        await call(c, adapter)
    assert info.value.code == code
    assert KEY not in str(info.value) and KEY[:12] not in info.value.message
    if answer == "429":
        assert info.value.retry_after == pytest.approx(2.0, abs=0.01)
    assert fake.stats()["calls"] == 1  # the SDK's own retries are off


async def test_refusal_by_content(case: Any) -> None:
    c, _, adapter = case
    with pytest.raises(FatalError) as info:
        await call(c, adapter, prompt="Topic: [refuse] something")
    assert info.value.code == "content_refused"


async def test_timeout_is_retryable(case: Any) -> None:
    c, fake, adapter = case
    fake.script("timeout")
    start = time.monotonic()
    with pytest.raises(RetryableError) as info:
        await call(c, adapter)
    assert info.value.code == "timeout"
    assert time.monotonic() - start < 2.9  # the client gave up at its 1 s timeout, not the fake's 3 s


async def test_missing_key_is_fatal(case: Any) -> None:
    c, _, adapter = case
    with pytest.raises(FatalError) as info:
        if c.text:
            await adapter.generate_text(TextRequest(model=c.model, prompt="x"), None, CTX)
        else:
            await adapter.generate_image(ImageRequest(model=c.model, prompt="x"), None, CTX)
    assert info.value.code == "missing_api_key"


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest",
                                   "gemini:gemini-2.0-flash", "replicate:black-forest-labs/flux-schnell",
                                   "openai:dall-e-3", "offline:template"])
def test_known_models_validate(model: str) -> None:
    App().validate_model(model)


@pytest.mark.parametrize("model", ["openai:llama-3", "mystery:model", "anthropic:gpt-4o", "gemini:claude",
                                   "replicate:no-slash", "openai:", "gpt-4o"])
def test_unknown_models_are_refused(model: str) -> None:
    with pytest.raises(ValueError):
        App().validate_model(model)


async def test_sdk_clients_are_cached_per_key() -> None:
    with FakeOpenAI() as fake:
        adapter = App().build_provider("openai", Settings(openai_base_url=fake.base_url))
        await adapter.generate_text(TextRequest(model="gpt-4o-mini", prompt="a"), KEY, CTX)
        await adapter.generate_text(TextRequest(model="gpt-4o-mini", prompt="b"), KEY, CTX)
        await adapter.generate_text(TextRequest(model="gpt-4o-mini", prompt="c"), "sk-other-key-000000", CTX)
        assert len(adapter.clients._clients) == 2
        assert all(KEY not in str(k) for k in adapter.clients._clients)
