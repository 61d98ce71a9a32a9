import pytest

from blogqueue.settings import RateLimit, Settings, SettingsError


def test_defaults_run_on_a_laptop():
    s = Settings.from_env({})
    assert s.default_model == "offline:template"
    assert s.retry_schedule == (10.0, 60.0, 300.0)
    assert s.max_attempts == 4


@pytest.mark.parametrize(("var", "value"), [
    ("BLOGQUEUE_WORKER_CONCURRENCY", "lots"),
    ("BLOGQUEUE_WORKER_CONCURRENCY", "0"),
    ("BLOGQUEUE_RETRY_SCHEDULE", "10,-1"),
    ("BLOGQUEUE_RATE_LIMITS", "openai:rpm=fast"),
    ("BLOGQUEUE_RATE_LIMITS", "openai:qps=3"),
    ("BLOGQUEUE_DATABASE_URL", "mysql://x"),
    ("BLOGQUEUE_PUBLISHER", "ftp server"),  # an unknown name is refused at start: App.check
    ("BLOGQUEUE_QUEUE_NAME", "has space"),
])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({var: value})
    assert var in str(err.value)


def test_rate_limits_and_schedule_parse():
    s = Settings.from_env({"BLOGQUEUE_RATE_LIMITS": "openai:rpm=500,tpm=200000; replicate:rpm=600",
                           "BLOGQUEUE_RETRY_SCHEDULE": "1, 2.5"})
    assert s.rate_limit("openai") == RateLimit(rpm=500, tpm=200000)
    assert s.rate_limit("replicate") == RateLimit(rpm=600)
    assert s.rate_limit("gemini") == RateLimit()
    assert s.retry_schedule == (1.0, 2.5)
    assert Settings.from_env(s.to_env()) == s


def test_secrets_stay_out_of_repr():
    s = Settings.from_env({"BLOGQUEUE_OPENAI_API_KEY": "sk-live-abcdef123456",
                           "BLOGQUEUE_SECRET_KEY": "hunter2hunter2"})
    assert "sk-live" not in repr(s) and "hunter2" not in repr(s)
