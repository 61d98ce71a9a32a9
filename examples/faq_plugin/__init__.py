"""A blogqueue plugin: the `faq` job kind and a `pages` publisher, added through `blogqueue.App`.

Run it (from the repository root, or wherever `examples` is importable):

    BLOGQUEUE_PUBLISHER=pages FAQ_PAGES_DIR=/tmp/faq-pages blogqueue worker --app examples.faq_plugin:app
    blogqueue serve --app examples.faq_plugin:app

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/v1/jobs \\
         -d '{"kind": "faq", "source": {"type": "keyword", "keyword": "green tea"}}'

A `faq` job runs three stages, each saved before the next starts: `outline`
(an LLM call listing questions), `answers` (an LLM call answering them) and
`publish` (the deployment's publisher). A retry resumes at the first unsaved
stage, so a saved LLM call is never paid twice.
"""

from __future__ import annotations

from typing import Any

import blogqueue

from .pages import PagesPublisher, pages_config

app = blogqueue.App()  # the built-in kinds, sources, publishers and providers, plus what follows

app.prompt("faq/outline", version="faq-1",
           system="You plan FAQ pages for an online store. Answer with one question per line.",
           user="List five questions shoppers ask about this topic.\nTopic: {topic}")
app.prompt("faq/answers", version="faq-1",
           system="You answer shoppers' questions briefly and accurately.",
           user="Answer each question in two sentences, as 'Q: ...' and 'A: ...' lines.\n{questions}")


async def outline(run: blogqueue.Run) -> dict[str, Any]:
    prompt = run.prompt("faq/outline")
    system, user = prompt.format(topic=run.spec["source"]["keyword"])
    r = await run.text(system, user, max_tokens=300)
    return {"questions": r.text, "model": r.model, "tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_version": prompt.version}


async def answers(run: blogqueue.Run) -> dict[str, Any]:
    system, user = run.prompt("faq/answers").format(questions=run.outputs["outline"]["questions"])
    r = await run.text(system, user, max_tokens=800)
    if not r.text.strip():
        raise blogqueue.RetryableError("the model answered with nothing", code="empty_answer")
    return {"text": r.text, "model": r.model, "tokens": r.prompt_tokens + r.completion_tokens}


async def publish(run: blogqueue.Run) -> dict[str, Any]:
    if not run.spec["publish"]:
        return {"skipped": True}
    page = {"title": f"FAQ: {run.spec['source']['keyword']}", "body": run.outputs["answers"]["text"]}
    return await run.publish(page)  # BLOGQUEUE_PUBLISHER's publisher, with the job id as idempotency key


app.kind("faq", [("outline", outline), ("answers", answers), ("publish", publish)],
         sources=["keyword"], credit_cost=3)
app.publisher("pages", PagesPublisher(), config=pages_config)
