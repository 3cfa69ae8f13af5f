"""Activities for every pattern example in this folder.

``itonami run <example>.kotoba --activities example_activities.py`` finds the
``registry`` below. It also holds the order-processing activities (from
``order_activities.py``), so ``subworkflow.kotoba``, whose children run the
order workflow, needs this one module too.

A parameter that takes a whole object (``user``, ``booking``) is keyword-only:
a lone positional ``dict`` parameter would receive the step's entire input.

The activities are deterministic stand-ins for real services, so a run's
outputs can be predicted (and are checked by ``tests/examples``). A few
inputs make them fail on purpose, to show retries and compensation:

* ``send_email`` rejects an address without ``@`` (``InvalidAddress``, which
  ``activity.kotoba`` lists as non-retryable);
* ``fraud_score`` rates an order id containing ``FRAUD`` as risky;
* ``book_car`` has no car for a trip id containing ``NOCAR``, so the trip saga
  cancels the flight and the hotel it booked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from order_activities import registry as order_registry

from itonami import ActivityRegistry, NonRetryableError

_own = ActivityRegistry()

# ---------------------------------------------------------------- activity.kotoba


class InvalidAddress(Exception):
    """An e-mail address that cannot be delivered to; retrying will not help."""


@_own.activity()
def send_email(to: str, template: str, locale: str) -> dict[str, Any]:
    """Send a templated e-mail; the message id names template, locale and recipient."""
    if "@" not in to:
        raise InvalidAddress(f"cannot send to {to!r}: not an e-mail address")
    return {"message_id": f"<{template}.{locale}.{to}>", "to": to}


# ---------------------------------------------------------------- decision.kotoba


@_own.activity()
def fraud_score(order_id: str) -> dict[str, Any]:
    """A risk score in [0, 1]: high for order ids that contain ``FRAUD``."""
    return {"order_id": order_id, "risk": 0.95 if "FRAUD" in order_id else 0.12}


@_own.activity()
def reject_order() -> dict[str, Any]:
    """Refuse a risky order."""
    return {"decision": "rejected"}


@_own.activity()
def manual_review() -> dict[str, Any]:
    """Queue a large order for a person to look at."""
    return {"decision": "manual_review"}


@_own.activity()
def auto_approve() -> dict[str, Any]:
    """Approve an ordinary order."""
    return {"decision": "approved"}


# ---------------------------------------------------------------- map.kotoba


@_own.activity()
def ship_line(sku: str, quantity: int, position: int) -> dict[str, Any]:
    """Ship one order line; the tracking number names its position and SKU."""
    if quantity <= 0:
        raise NonRetryableError(f"line {position}: quantity must be positive, got {quantity}")
    return {"sku": sku, "quantity": quantity, "tracking": f"TRK-{position}-{sku}"}


# ---------------------------------------------------------------- parallel.kotoba

#: Seconds each provider takes to answer: gamma is slow, so alpha and beta win.
QUOTE_DELAYS = {"alpha": 0.0, "beta": 0.01, "gamma": 5.0}
#: What each provider quotes, as a multiple of the symbol's length.
QUOTE_FACTORS = {"alpha": 101.0, "beta": 99.5, "gamma": 100.0}


@_own.activity()
async def fetch_quote(provider: str, symbol: str) -> dict[str, Any]:
    """Ask one provider for a price."""
    await asyncio.sleep(QUOTE_DELAYS[provider])
    return {"provider": provider, "symbol": symbol, "price": QUOTE_FACTORS[provider] * len(symbol)}


# ---------------------------------------------------------------- saga.kotoba


@_own.activity()
def book_flight(trip_id: str) -> dict[str, Any]:
    """Book the flight."""
    return {"kind": "flight", "booking_id": f"FL-{trip_id}"}


@_own.activity()
def book_hotel(trip_id: str) -> dict[str, Any]:
    """Book the hotel."""
    return {"kind": "hotel", "booking_id": f"HO-{trip_id}"}


@_own.activity()
def book_car(trip_id: str) -> dict[str, Any]:
    """Book a car; there is none for trips whose id contains ``NOCAR``."""
    if "NOCAR" in trip_id:
        raise NonRetryableError(f"no car available for trip {trip_id}", error_type="NoCar")
    return {"kind": "car", "booking_id": f"CA-{trip_id}"}


def _cancel(booking: dict[str, Any]) -> dict[str, Any]:
    return {"cancelled": booking["booking_id"]}


@_own.activity()
def cancel_flight(*, booking: dict[str, Any]) -> dict[str, Any]:
    """Cancel a booked flight (compensation)."""
    return _cancel(booking)


@_own.activity()
def cancel_hotel(*, booking: dict[str, Any]) -> dict[str, Any]:
    """Cancel a booked hotel (compensation)."""
    return _cancel(booking)


@_own.activity()
def cancel_car(*, booking: dict[str, Any]) -> dict[str, Any]:
    """Cancel a booked car (compensation)."""
    return _cancel(booking)


@_own.activity()
def notify_trip_failed(**_: object) -> dict[str, Any]:
    """Tell the traveller the trip could not be booked."""
    return {"notified": True}


# ---------------------------------------------------------------- sequence.kotoba


@_own.activity()
def load_user(user_id: str) -> dict[str, Any]:
    """Look the user up."""
    return {"id": user_id, "name": user_id.replace("-", " ").title()}


@_own.activity()
def create_account(*, user: dict[str, Any]) -> dict[str, Any]:
    """Open an account for the user."""
    return {"id": f"ACC-{user['id']}", "owner": user["name"]}


@_own.activity()
def send_notification(account_id: str) -> dict[str, Any]:
    """Tell the user their account is ready."""
    return {"sent": True, "account_id": account_id}


# ---------------------------------------------------------------- wait_signal.kotoba


@_own.activity()
def request_approval(expense_id: str) -> dict[str, Any]:
    """Ask an approver to look at the expense."""
    return {"requested": expense_id}


@_own.activity()
def pay_expense(expense_id: str, approver: str) -> dict[str, Any]:
    """Pay an approved expense."""
    return {"paid": expense_id, "approved_by": approver}


# ---------------------------------------------------------------- wait_timer.kotoba


@_own.activity()
def send_reminder(user_id: str) -> dict[str, Any]:
    """Remind the user."""
    return {"reminded": user_id}


#: Every activity the examples reference (the order activities included).
registry = _own.merge(order_registry)
