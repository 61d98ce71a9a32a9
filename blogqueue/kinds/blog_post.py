"""blog_post: source -> content -> image -> publish.

Prompts (`app.prompts`, replaceable): `blog_post/<source type>` writes the
post from the source stage's output (a source type without its own prompt
uses `blog_post/keyword`, which needs only the topic); `blog_post/image` is
the image prompt. Values: topic, tone, language, name and description (a
product), items (TMDb titles, one line each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pipeline import Run, usage
from ..prompts import VERSION

if TYPE_CHECKING:
    from ..app import App

KIND = "blog_post"
CREDIT_COST = 25
SYSTEM = ("You write helpful, original blog posts for an online store. Write in {language}, "
          "in a {tone} tone. Start with a '# ' title line, then the post in Markdown.")
PROMPTS = {
    "blog_post/keyword": (SYSTEM, "Write a blog post of about 600 words.\nTopic: {topic}"),
    "blog_post/product": (SYSTEM, "Write a blog post of about 600 words that features one product naturally, "
                                  "without sounding like an advert.\nTopic: {topic}\nProduct: {name}. {description}"),
    "blog_post/tmdb": (SYSTEM, "Write a roundup blog post of about 800 words with one short section per title, "
                               "in this order, using only the facts given.\nTopic: {topic}\n{items}"),
    "blog_post/image": ("", "A bright editorial photograph illustrating: {title}"),
}
TMDB_ITEM = "- {title} ({year}), rated {rating}/10: {overview}"


async def source(run: Run) -> dict[str, Any]:
    return await run.fetch_source()


async def content(run: Run) -> dict[str, Any]:
    src = run.outputs["source"]
    name = f"blog_post/{src.get('source', 'keyword')}"
    prompt = run.prompt(name if name in run.app.prompts else "blog_post/keyword")
    product = src.get("product") or {}
    items = "\n".join(TMDB_ITEM.format(title=i["title"], year=i.get("year") or "n/a", rating=i.get("rating"),
                                       overview=i.get("overview", "")) for i in src.get("items", []))
    system, user = prompt.format(topic=src["topic"], language=src.get("language", "en"),
                                 tone=src.get("tone", "friendly"), name=product.get("name", ""),
                                 description=product.get("description", ""), items=items)
    result = await run.text(system, user)
    title, _, body = result.text.strip().partition("\n")
    title = title.lstrip("# ").strip() or src["topic"]
    return {"title": title, "body": body.strip(), "usage": usage(result), "prompt_version": prompt.version}


async def image(run: Run) -> dict[str, Any]:
    if not run.spec.get("image", True):
        return {"skipped": True}
    _, user = run.prompt("blog_post/image").format(title=run.outputs["content"]["title"])
    return {"url": await run.image(user)}


async def publish(run: Run) -> dict[str, Any]:
    if not run.spec.get("publish", True):
        return {"skipped": True}
    post = {"title": run.outputs["content"]["title"], "body": run.outputs["content"]["body"],
            "image_url": run.outputs["image"].get("url")}
    return await run.publish(post, run.outputs["source"])


def result(run: Run) -> dict[str, Any]:
    content = run.outputs["content"]
    return {"title": content["title"], "body": content["body"],
            "image_url": run.outputs["image"].get("url"), "publish": run.outputs["publish"],
            "usage": content["usage"], "prompt_version": content.get("prompt_version", VERSION)}


def register(app: App) -> None:
    for name, (system, user) in PROMPTS.items():
        app.prompt(name, system=system, user=user)
    app.kind(KIND, [("source", source), ("content", content), ("image", image), ("publish", publish)],
             sources=["keyword", "product", "tmdb"], result=result, credit_cost=CREDIT_COST)
