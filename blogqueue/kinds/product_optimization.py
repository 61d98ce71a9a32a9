"""product_optimization: product -> rewritten title/description/SEO fields -> write back.

Prompt (`app.prompts`, replaceable): `product_optimization/product`, over the
product's name, description, brand and category; the model must answer with
one JSON object with title, description, seo_title and seo_description.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import FatalError
from ..pipeline import Run, usage
from ..prompts import VERSION

if TYPE_CHECKING:
    from ..app import App

KIND = "product_optimization"
CREDIT_COST = 5
PROMPT = "product_optimization/product"
SYSTEM = ("You are an e-commerce copywriter. Answer with one JSON object with the keys "
          "title, description, seo_title, seo_description and nothing else.")
USER = ("Rewrite this product listing to be clearer and more persuasive, keeping every fact.\n"
        "Topic: {name}\nCurrent description: {description}\nBrand: {brand}\nCategory: {category}")
FIELDS = ("title", "description", "seo_title", "seo_description")


async def product(run: Run) -> dict[str, Any]:
    return await run.fetch_source()


async def rewrite(run: Run) -> dict[str, Any]:
    item = run.outputs["product"]["product"]
    prompt = run.prompt(PROMPT)
    system, user = prompt.format(name=item["name"], description=item.get("description", ""),
                                 brand=item.get("brand", ""), category=item.get("category", ""))
    result = await run.text(system, user, max_tokens=800, json_output=True)
    try:
        fields = json.loads(_strip_fence(result.text))
    except ValueError:
        raise FatalError("the model did not answer with the JSON object the rewrite asks for",
                         code="bad_model_output") from None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in FIELDS):
        raise FatalError("the model's rewrite lacks title, description or SEO fields", code="bad_model_output")
    return {**{k: fields[k] for k in FIELDS}, "usage": usage(result), "prompt_version": prompt.version}


async def write_back(run: Run) -> dict[str, Any]:
    if not run.spec.get("publish", True):
        return {"skipped": True}
    fields = {k: v for k, v in run.outputs["rewrite"].items() if k not in ("usage", "prompt_version")}
    return await run.write_back(fields, run.outputs["product"])


def result(run: Run) -> dict[str, Any]:
    out = run.outputs["rewrite"]
    return {**{k: v for k, v in out.items() if k not in ("usage", "prompt_version")},
            "original": run.outputs["product"]["product"], "write_back": run.outputs["write_back"],
            "usage": out["usage"], "prompt_version": out.get("prompt_version", VERSION)}


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def register(app: App) -> None:
    app.prompt(PROMPT, system=SYSTEM, user=USER)
    app.kind(KIND, [("product", product), ("rewrite", rewrite), ("write_back", write_back)],
             sources=["product"], result=result, credit_cost=CREDIT_COST)
