"""Prompt templates, as data: one place, one version, stored with every result.

TEMPLATES maps (job kind, source type) to its system and user templates.
Change any text here and bump VERSION: each result records the version its
content stage was written with (`prompt_version`), so results stay traceable
to the exact wording that produced them.
"""

from __future__ import annotations

from typing import Any

VERSION = "2026-11-v2"

BLOG_SYSTEM = ("You write helpful, original blog posts for an online store. Write in {language}, "
               "in a {tone} tone. Start with a '# ' title line, then the post in Markdown.")

TEMPLATES: dict[tuple[str, str], dict[str, str]] = {
    ("blog_post", "keyword"): {
        "system": BLOG_SYSTEM,
        "prompt": "Write a blog post of about 600 words.\nTopic: {topic}",
    },
    ("blog_post", "product"): {
        "system": BLOG_SYSTEM,
        "prompt": ("Write a blog post of about 600 words that features one product naturally, "
                   "without sounding like an advert.\nTopic: {topic}\nProduct: {name}. {description}"),
    },
    ("blog_post", "tmdb"): {
        "system": BLOG_SYSTEM,
        "prompt": ("Write a roundup blog post of about 800 words with one short section per title, "
                   "in this order, using only the facts given.\nTopic: {topic}\n{items}"),
    },
    ("product_optimization", "product"): {
        "system": ("You are an e-commerce copywriter. Answer with one JSON object with the keys "
                   "title, description, seo_title, seo_description and nothing else."),
        "prompt": ("Rewrite this product listing to be clearer and more persuasive, keeping every fact.\n"
                   "Topic: {name}\nCurrent description: {description}\nBrand: {brand}\nCategory: {category}"),
    },
}
IMAGE_PROMPT = "A bright editorial photograph illustrating: {title}"
TMDB_ITEM = "- {title} ({year}), rated {rating}/10: {overview}"


def blog(source: dict[str, Any]) -> tuple[str, str]:
    """System and user prompt for a blog post from the source stage's output."""
    t = TEMPLATES[("blog_post", source.get("source", "keyword"))]
    product = source.get("product") or {}
    items = "\n".join(TMDB_ITEM.format(title=i["title"], year=i.get("year") or "n/a", rating=i.get("rating"),
                                       overview=i.get("overview", "")) for i in source.get("items", []))
    system = t["system"].format(language=source.get("language", "en"), tone=source.get("tone", "friendly"))
    prompt = t["prompt"].format(topic=source["topic"], name=product.get("name", ""),
                                description=product.get("description", ""), items=items)
    return system, prompt.strip()


def image(title: str) -> str:
    return IMAGE_PROMPT.format(title=title)


def rewrite(product: dict[str, Any]) -> tuple[str, str]:
    t = TEMPLATES[("product_optimization", "product")]
    return t["system"], t["prompt"].format(
        name=product["name"], description=product.get("description", ""),
        brand=product.get("brand", ""), category=product.get("category", ""))
