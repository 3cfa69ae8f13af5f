"""Activities for ``order_processing.kotoba`` (run it with ``make example``).

Each activity is a plain function; the registry passes the step's mapped
input fields as keyword arguments. ``current_context()`` gives the attempt's
idempotency key, which a real payment call would send to the provider so a
re-run after a crash charges the card once.
"""

from __future__ import annotations

import asyncio

from itonami import ActivityRegistry, NonRetryableError, current_context

registry = ActivityRegistry()

#: Orders above this amount are declined, so the saga compensates.
PAYMENT_LIMIT = 10_000


@registry.activity()
def validate_order(order_id: str, customer_id: str) -> dict:
    """Check the order exists and belongs to the customer."""
    if not order_id.startswith("ORD-"):
        raise NonRetryableError(f"malformed order id {order_id!r}")
    return {"valid": True, "order_id": order_id, "customer_id": customer_id}


@registry.activity()
async def process_payment(amount: float) -> dict:
    """Charge the customer; the idempotency key makes the charge happen once."""
    key = current_context().idempotency_key
    await asyncio.sleep(0)  # stands in for the call to a payment provider
    if amount > PAYMENT_LIMIT:
        raise NonRetryableError(f"payment of {amount} declined: over the limit")
    return {"payment_id": f"PAY-{key[:12]}", "charged": amount}


@registry.activity()
def reserve_inventory(order_id: str) -> dict:
    """Reserve the order's items in the warehouse."""
    return {"reservation_id": f"RES-{order_id}"}


@registry.activity()
def send_confirmation() -> dict:
    """E-mail the customer; returns the workflow's outputs by name."""
    key = current_context().idempotency_key
    confirmation = f"CONF-{key[:8]}"
    return {"processed": True, "confirmationId": confirmation, "confirmation_id": confirmation}


@registry.activity()
def cancel_payment(**_: object) -> dict:
    """Refund the payment (compensation)."""
    return {"refunded": True}


@registry.activity()
def release_inventory(**_: object) -> dict:
    """Release the reservation (compensation)."""
    return {"released": True}


@registry.activity()
def send_failure_notification(**_: object) -> dict:
    """Tell the customer the order failed (compensation)."""
    return {"notified": True}
