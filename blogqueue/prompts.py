"""Prompt templates, as data. Their version is stored with every result."""

from __future__ import annotations

from typing import Any

VERSION = "2026-11-v1"

BLOG_SYSTEM = ("You write helpful, original blog posts for an online store. Write in {language}, "
               "in a {tone} tone. Start with a '# ' title line, then the post in Markdown.")
BLOG_PROMPT = "Write a blog post of about 600 words.\nTopic: {topic}\n{extra}"
PRODUCT_EXTRA = "It features this product: {name}. {description}"
IMAGE_PROMPT = "A bright editorial photograph illustrating: {title}"
REWRITE_SYSTEM = ("You are an e-commerce copywriter. Answer with one JSON object with the keys "
                  "title, description, seo_title, seo_description and nothing else.")
REWRITE_PROMPT = ("Rewrite this product listing to be clearer and more persuasive, keeping every fact.\n"
                  "Topic: {name}\nCurrent description: {description}\nBrand: {brand}\nCategory: {category}")


def blog(source: dict[str, Any]) -> tuple[str, str]:
    product = source.get("product")
    extra = PRODUCT_EXTRA.format(name=product["name"], description=product.get("description", "")) if product else ""
    system = BLOG_SYSTEM.format(language=source.get("language", "en"), tone=source.get("tone", "friendly"))
    return system, BLOG_PROMPT.format(topic=source["topic"], extra=extra).strip()


def image(title: str) -> str:
    return IMAGE_PROMPT.format(title=title)


def rewrite(product: dict[str, Any]) -> tuple[str, str]:
    return REWRITE_SYSTEM, REWRITE_PROMPT.format(
        name=product["name"], description=product.get("description", ""),
        brand=product.get("brand", ""), category=product.get("category", ""))
