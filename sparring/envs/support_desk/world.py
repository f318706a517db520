"""The support desk's world: a JSON database of users, orders and products, and the tools over it.

Every tool is a pure function of the database: it returns its result and the new database (a copy
where it wrote), or raises `DeskError` with what was wrong. The same functions play the policy's
calls during an episode and the task's expected actions when the verifier builds the expected
database, so both sides change the world in exactly one way.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import orjson

from sparring.tools.specs import ToolSpec

Db = dict[str, Any]
CANCEL_REASONS = ("no longer needed", "ordered by mistake")
HASHED_TABLES = ("users", "orders")
"""Products never change (an exchange does not touch stock), so the hash covers users and orders."""


class DeskError(ValueError):
    """A call the desk refuses: wrong status, unknown id, an item that is not in the order, ..."""


DATA = resources.files("sparring.envs.support_desk")
"""The package's data files (world.json, tasks.json, policy.md); named, since `__package__` may be None."""


@cache
def _world_bytes() -> bytes:
    return DATA.joinpath("world.json").read_bytes()


def load_world() -> Db:
    """A fresh copy of the shipped database."""
    return orjson.loads(_world_bytes())


def db_hash(db: Db, tables: tuple[str, ...] = HASHED_TABLES) -> str:
    """A canonical hash of the tables: sorted keys, so equal data always hashes alike."""
    canonical = orjson.dumps({t: db[t] for t in tables}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _tool(name: str, description: str, **properties: dict[str, Any]) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        parameters={
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        },
    )


_ORDER_ID = _string("The order id, like '#W1001'.")
_USER_ID = _string("The user id, like 'mia_garcia'.")
_ITEM_IDS = {"type": "array", "items": {"type": "string"}, "description": "Item ids of the order, like 'i-1001'."}
_PAYMENT = _string("A payment method id of the user, like 'card-mia-4242' or 'gift-mia'.")
_ADDRESS = {
    "address1": _string("Street and number."),
    "city": _string("City."),
    "state": _string("Two-letter state code."),
    "zip": _string("Zip code."),
}

TOOL_SPECS: tuple[ToolSpec, ...] = (
    _tool(
        "find_user_id_by_email", "Find a customer's user id by email; this authenticates them.", email=_string("Email.")
    ),
    _tool(
        "find_user_id_by_name_zip",
        "Find a customer's user id by first name, last name and zip code; this authenticates them.",
        first_name=_string("First name."),
        last_name=_string("Last name."),
        zip=_string("Zip code."),
    ),
    _tool("get_user_details", "The authenticated customer's profile, payment methods and order ids.", user_id=_USER_ID),
    _tool(
        "get_order_details", "Status, items, address and payments of one of the customer's orders.", order_id=_ORDER_ID
    ),
    _tool(
        "get_product_details",
        "A product's variants: item ids, options, prices, availability.",
        product_id=_string("The product id, like 'p-tshirt'."),
    ),
    _tool(
        "cancel_pending_order",
        "Cancel a pending order; the payment is refunded to the original method.",
        order_id=_ORDER_ID,
        reason={"type": "string", "enum": list(CANCEL_REASONS), "description": "Why the customer cancels."},
    ),
    _tool(
        "modify_pending_order_address",
        "Change the shipping address of a pending order.",
        order_id=_ORDER_ID,
        **_ADDRESS,
    ),
    _tool("modify_user_address", "Change the customer's default address.", user_id=_USER_ID, **_ADDRESS),
    _tool(
        "return_delivered_order_items",
        "Return items of a delivered order; the refund goes to the given payment method.",
        order_id=_ORDER_ID,
        item_ids=_ITEM_IDS,
        payment_method_id=_PAYMENT,
    ),
    _tool(
        "exchange_delivered_order_items",
        "Exchange items of a delivered order for available variants of the same products.",
        order_id=_ORDER_ID,
        item_ids=_ITEM_IDS,
        new_item_ids={"type": "array", "items": {"type": "string"}, "description": "The new item ids, in order."},
        payment_method_id=_PAYMENT,
    ),
    _tool(
        "transfer_to_human_agents",
        "Hand the customer to a human agent when the request is outside policy or tools; ends the conversation.",
        summary=_string("A short summary of the customer's request."),
    ),
)
WRITE_TOOLS = frozenset(
    {
        "cancel_pending_order",
        "modify_pending_order_address",
        "modify_user_address",
        "return_delivered_order_items",
        "exchange_delivered_order_items",
    }
)
AUTH_TOOLS = frozenset({"find_user_id_by_email", "find_user_id_by_name_zip"})


def _user(db: Db, user_id: str) -> dict[str, Any]:
    try:
        return db["users"][user_id]
    except KeyError:
        raise DeskError(f"no user with id {user_id!r}") from None


def _order(db: Db, order_id: str) -> dict[str, Any]:
    try:
        return db["orders"][order_id]
    except KeyError:
        raise DeskError(f"no order with id {order_id!r}") from None


def _variant(db: Db, item_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(product, variant) of an item id."""
    for product in db["products"].values():
        if item_id in product["variants"]:
            return product, product["variants"][item_id]
    raise DeskError(f"no item with id {item_id!r}")


def _require_status(order: dict[str, Any], status: str, action: str) -> None:
    if order["status"] != status:
        raise DeskError(f"order {order['order_id']} is {order['status']}; only a {status} order can be {action}")


def _order_items(order: dict[str, Any], item_ids: list[str]) -> list[dict[str, Any]]:
    """The order's items for these ids, each id at most as often as the order holds it."""
    if not item_ids:
        raise DeskError("item_ids is empty; name at least one item of the order")
    remaining = [item for item in order["items"]]
    chosen = []
    for item_id in item_ids:
        match = next((item for item in remaining if item["item_id"] == item_id), None)
        if match is None:
            raise DeskError(f"item {item_id!r} is not in order {order['order_id']} (or named twice)")
        remaining.remove(match)
        chosen.append(match)
    return chosen


def _refund_method(db: Db, order: dict[str, Any], payment_method_id: str) -> dict[str, Any]:
    """The refund target: the order's original method, or a gift card of its user."""
    methods = db["users"][order["user_id"]]["payment_methods"]
    original = order["payment_history"][0]["payment_method_id"]
    method = methods.get(payment_method_id)
    if method is None:
        raise DeskError(f"the user has no payment method {payment_method_id!r}; theirs: {', '.join(methods)}")
    if payment_method_id != original and method["source"] != "gift_card":
        raise DeskError(f"refunds go to the original payment method ({original}) or a gift card")
    return method


def _money(amount: float) -> float:
    return round(amount + 0.0, 2)


def find_user_id_by_email(db: Db, email: str) -> tuple[Any, Db]:
    for user in db["users"].values():
        if user["email"].lower() == email.strip().lower():
            return user["user_id"], db
    raise DeskError(f"no user with email {email!r}")


def find_user_id_by_name_zip(db: Db, first_name: str, last_name: str, zip: str) -> tuple[Any, Db]:
    for user in db["users"].values():
        name = user["name"]
        if (
            name["first_name"].lower() == first_name.strip().lower()
            and name["last_name"].lower() == last_name.strip().lower()
            and user["address"]["zip"] == zip.strip()
        ):
            return user["user_id"], db
    raise DeskError(f"no user named {first_name} {last_name} with zip {zip!r}")


def get_user_details(db: Db, user_id: str) -> tuple[Any, Db]:
    return _user(db, user_id), db


def get_order_details(db: Db, order_id: str) -> tuple[Any, Db]:
    return _order(db, order_id), db


def get_product_details(db: Db, product_id: str) -> tuple[Any, Db]:
    try:
        return db["products"][product_id], db
    except KeyError:
        raise DeskError(f"no product with id {product_id!r}; products: {', '.join(db['products'])}") from None


def cancel_pending_order(db: Db, order_id: str, reason: str) -> tuple[Any, Db]:
    _require_status(_order(db, order_id), "pending", "cancelled")
    db = copy.deepcopy(db)
    order = db["orders"][order_id]
    paid = order["payment_history"][0]
    amount = _money(sum(p["amount"] if p["type"] == "payment" else -p["amount"] for p in order["payment_history"]))
    order["status"] = "cancelled"
    order["cancel_reason"] = reason
    order["payment_history"].append(
        {"type": "refund", "amount": amount, "payment_method_id": paid["payment_method_id"]}
    )
    method = db["users"][order["user_id"]]["payment_methods"][paid["payment_method_id"]]
    if method["source"] == "gift_card":
        method["balance"] = _money(method["balance"] + amount)
    return {"order_id": order_id, "status": "cancelled", "refund": amount, "refunded_to": paid["payment_method_id"]}, db


def modify_pending_order_address(
    db: Db, order_id: str, address1: str, city: str, state: str, zip: str
) -> tuple[Any, Db]:
    _require_status(_order(db, order_id), "pending", "given a new address")
    db = copy.deepcopy(db)
    db["orders"][order_id]["address"] = {"address1": address1, "city": city, "state": state, "zip": zip}
    return {"order_id": order_id, "address": db["orders"][order_id]["address"]}, db


def modify_user_address(db: Db, user_id: str, address1: str, city: str, state: str, zip: str) -> tuple[Any, Db]:
    _user(db, user_id)
    db = copy.deepcopy(db)
    db["users"][user_id]["address"] = {"address1": address1, "city": city, "state": state, "zip": zip}
    return {"user_id": user_id, "address": db["users"][user_id]["address"]}, db


def return_delivered_order_items(db: Db, order_id: str, item_ids: list[str], payment_method_id: str) -> tuple[Any, Db]:
    order = _order(db, order_id)
    _require_status(order, "delivered", "returned")
    items = _order_items(order, item_ids)
    method = _refund_method(db, order, payment_method_id)
    amount = _money(sum(item["price"] for item in items))
    db = copy.deepcopy(db)
    order = db["orders"][order_id]
    order["status"] = "return requested"
    order["return_items"] = sorted(item_ids)
    order["return_payment_method_id"] = payment_method_id
    if method["source"] == "gift_card":
        gift = db["users"][order["user_id"]]["payment_methods"][payment_method_id]
        gift["balance"] = _money(gift["balance"] + amount)
    return {"order_id": order_id, "status": "return requested", "refund": amount, "refund_to": payment_method_id}, db


def exchange_delivered_order_items(
    db: Db, order_id: str, item_ids: list[str], new_item_ids: list[str], payment_method_id: str
) -> tuple[Any, Db]:
    order = _order(db, order_id)
    _require_status(order, "delivered", "exchanged")
    items = _order_items(order, item_ids)
    if len(new_item_ids) != len(item_ids):
        raise DeskError(f"{len(item_ids)} items to exchange but {len(new_item_ids)} new items; give one new item each")
    difference = 0.0
    for old, new_id in zip(items, new_item_ids, strict=True):
        product, variant = _variant(db, new_id)
        if product["product_id"] != old["product_id"]:
            raise DeskError(f"{new_id} is a {product['name']}, not a variant of {old['name']} ({old['item_id']})")
        if new_id == old["item_id"]:
            raise DeskError(f"{new_id} is the item the customer already has")
        if not variant["available"]:
            raise DeskError(f"{new_id} ({product['name']}, {variant['options']}) is not available")
        difference += variant["price"] - old["price"]
    difference = _money(difference)
    methods = db["users"][order["user_id"]]["payment_methods"]
    method = methods.get(payment_method_id)
    if method is None:
        raise DeskError(f"the user has no payment method {payment_method_id!r}; theirs: {', '.join(methods)}")
    if method["source"] == "gift_card" and method["balance"] < difference:
        raise DeskError(
            f"gift card {payment_method_id} has {method['balance']:.2f}, less than the {difference:.2f} due"
        )
    db = copy.deepcopy(db)
    order = db["orders"][order_id]
    order["status"] = "exchange requested"
    order["exchange_items"] = sorted(item_ids)
    order["exchange_new_items"] = sorted(new_item_ids)
    order["exchange_payment_method_id"] = payment_method_id
    order["exchange_price_difference"] = difference
    if method["source"] == "gift_card":
        gift = db["users"][order["user_id"]]["payment_methods"][payment_method_id]
        gift["balance"] = _money(gift["balance"] - difference)
    return {"order_id": order_id, "status": "exchange requested", "price_difference": difference}, db


def transfer_to_human_agents(db: Db, summary: str) -> tuple[Any, Db]:
    return {"transferred": True, "summary": summary}, db


TOOLS: dict[str, Callable[..., tuple[Any, Db]]] = {
    "find_user_id_by_email": find_user_id_by_email,
    "find_user_id_by_name_zip": find_user_id_by_name_zip,
    "get_user_details": get_user_details,
    "get_order_details": get_order_details,
    "get_product_details": get_product_details,
    "cancel_pending_order": cancel_pending_order,
    "modify_pending_order_address": modify_pending_order_address,
    "modify_user_address": modify_user_address,
    "return_delivered_order_items": return_delivered_order_items,
    "exchange_delivered_order_items": exchange_delivered_order_items,
    "transfer_to_human_agents": transfer_to_human_agents,
}
