"""RATE_LIMITS dimensions per provider and the limiter's burst setting: bad values stop the process at start."""

from __future__ import annotations

import pytest

from blogqueue.app import App
from blogqueue.settings import RateLimit, Settings, SettingsError


def test_dimensions_parse_per_provider_and_round_trip():
    s = Settings.from_env({"BLOGQUEUE_RATE_LIMITS": "anthropic:rpm=50,itpm=40000,otpm=8000; openai:rpm=450,tpm=450000;"
                                                    "replicate:rpm=600; openai#3f2a:tpm=1000",
                           "BLOGQUEUE_RATE_LIMIT_BURST_SECONDS": "0.25"})
    assert s.rate_limit("anthropic") == RateLimit(rpm=50, itpm=40_000, otpm=8_000)
    assert s.rate_limit("openai").dimensions() == {"rpm": 450, "tpm": 450_000}
    assert s.rate_limits["openai#3f2a"] == RateLimit(tpm=1000)
    assert s.rate_limit_burst_seconds == 0.25
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize("value", [
    "openai:itpm=40000",          # OpenAI counts tokens together
    "anthropic:tpm=40000",        # Anthropic limits input and output separately
    "replicate:tpm=1000",         # images: requests only
    "anthropic:otpm=-5",
    "anthropic:otpm=lots",
    "gemini:rpm=10,qps=3",
])
def test_a_dimension_the_provider_does_not_have_or_a_bad_value_names_the_variable(value):
    with pytest.raises(SettingsError) as err:  # at parsing, or when the app checks its providers' dimensions
        App().check(Settings.from_env({"BLOGQUEUE_RATE_LIMITS": value}))
    assert "BLOGQUEUE_RATE_LIMITS" in str(err.value)


@pytest.mark.parametrize("value", ["0", "-1", "61", "soon"])
def test_the_burst_is_validated(value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"BLOGQUEUE_RATE_LIMIT_BURST_SECONDS": value})
    assert "BLOGQUEUE_RATE_LIMIT_BURST_SECONDS" in str(err.value)


def test_every_adapter_declares_its_dimensions():
    dims = {name: getattr(p.factory, "limit_dimensions", ()) for name, p in App().providers.items()}
    assert dims["openai"] == ("rpm", "tpm") and dims["gemini"] == ("rpm", "tpm")
    assert dims["anthropic"] == ("rpm", "itpm", "otpm") and dims["replicate"] == ("rpm",)
    assert all("rpm" in d for d in dims.values())
