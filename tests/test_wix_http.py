"""GET/PUT/DELETE /v1/wix-installation through the real app: tenant-scoped, validated, no takeover."""

from __future__ import annotations

import asyncpg
import pytest

from blogqueue.client import Client
from blogqueue.errors import Conflict, InvalidInput
from blogqueue.settings import Settings
from tests.http_fixtures import Api, TokenFactory, assert_error
from tests.openapi_contract import check

INSTANCE_A = "0f6c7a52-3d1b-4c55-9a1e-6f1d2c3b4a5e"
INSTANCE_B = "9a8b7c6d-1111-2222-3333-444455556666"


async def test_link_read_move_and_unlink(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    shop = await api.client(await make_token("shop-a"))
    empty = await shop.get("/v1/wix-installation")
    check(empty)
    assert empty.json() == {"tenant_id": "shop-a", "linked": False, "instance_id": None, "source": None,
                            "updated_at": None}
    put = await shop.put("/v1/wix-installation", json={"instance_id": INSTANCE_A})
    check(put)
    assert put.status_code == 200 and put.json()["linked"] and put.json()["instance_id"] == INSTANCE_A
    assert put.json()["source"] == "api" and put.json()["updated_at"]
    assert (await shop.get("/v1/wix-installation")).json() == put.json()
    moved = await shop.put("/v1/wix-installation", json={"instance_id": INSTANCE_B})
    assert moved.json()["instance_id"] == INSTANCE_B
    assert await pool.fetchval("SELECT count(*) FROM bq_wix_installations") == 1
    gone = await shop.delete("/v1/wix-installation")
    check(gone)
    assert gone.status_code == 200 and gone.json()["linked"] is False
    assert await pool.fetchval("SELECT count(*) FROM bq_wix_installations") == 0


async def test_another_tenant_cannot_take_a_linked_instance(api: Api, make_token: TokenFactory) -> None:
    a = await api.client(await make_token("shop-a"))
    b = await api.client(await make_token("shop-b"))
    assert (await a.put("/v1/wix-installation", json={"instance_id": INSTANCE_A})).status_code == 200
    assert (await b.put("/v1/wix-installation", json={"instance_id": INSTANCE_B})).status_code == 200
    for body in ({"instance_id": INSTANCE_A},):  # b tries to move onto a's instance, and a fresh tenant too
        taken = await b.put("/v1/wix-installation", json=body)
        check(taken)
        assert_error(taken, 409, "wix_instance_taken", "instance_id")
    c = await api.client(await make_token("shop-c"))
    assert_error(await c.put("/v1/wix-installation", json={"instance_id": INSTANCE_A}), 409, "wix_instance_taken")
    # Nothing changed: each tenant sees only its own link.
    assert (await a.get("/v1/wix-installation")).json()["instance_id"] == INSTANCE_A
    assert (await b.get("/v1/wix-installation")).json()["instance_id"] == INSTANCE_B
    assert (await c.get("/v1/wix-installation")).json()["linked"] is False


@pytest.mark.parametrize(("body", "field"), [
    ({"instance_id": "short"}, "instance_id"),
    ({"instance_id": "../../etc/passwd"}, "instance_id"),
    ({"instance_id": 12345678}, "instance_id"),
    ({}, "instance_id"),
    ({"instance_id": INSTANCE_A, "site": "x"}, "site"),
    (["instance_id"], "body"),
    ({"instance_id": "abc\u0000defghij"}, "body"),
])
async def test_bad_bodies_name_the_field_and_change_nothing(api: Api, make_token: TokenFactory,
                                                            body: object, field: str) -> None:
    shop = await api.client(await make_token("shop-a"))
    await shop.put("/v1/wix-installation", json={"instance_id": INSTANCE_B})
    resp = await shop.put("/v1/wix-installation", json=body)
    check(resp)
    assert_error(resp, 422, "invalid_input", field)
    assert (await shop.get("/v1/wix-installation")).json()["instance_id"] == INSTANCE_B


async def test_the_library_does_the_same(settings: Settings, pool: asyncpg.Pool) -> None:
    bq = Client(settings, pool)
    assert (await bq.put_wix_installation("shop-a", {"instance_id": INSTANCE_A}))["linked"]
    with pytest.raises(Conflict) as err:
        await bq.put_wix_installation("shop-b", {"instance_id": INSTANCE_A})
    assert err.value.code == "wix_instance_taken"
    with pytest.raises(InvalidInput):
        await bq.put_wix_installation("shop-b", {"instance_id": "x"})
    assert (await bq.get_wix_installation("shop-b"))["linked"] is False
    assert (await bq.delete_wix_installation("shop-a"))["linked"] is False
    assert (await bq.get_wix_installation("shop-a"))["linked"] is False
