"""Fake provider and third-party servers (OpenAI, Anthropic, Gemini, Replicate, TMDb, Wix, a webhook
receiver): real HTTP servers on 127.0.0.1 that speak each API's documented protocol and limits.

They ship with the package so users can load-test a deployment against them (see
docs/providers.md); the helpers that only the project's own tests and benchmarks use (worker
processes, private servers, the chaos harness) live in the repository's `testkit/`, outside the wheel.
"""
