"""A store with a few executions worth looking at: what the UI tests and the
screenshots use.

``populate(url)`` runs, on the store at ``url``: an order (a saga) that
completes, one whose payment fails for good and is compensated, an approval
that takes the "large" decision branch and then waits for a signal, a map
over three items, and a shipment that runs such a map as its sub-workflow.
``engine(url)`` is an engine with the demo activities (what a worker runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from itonami import (
    ActivityRegistry,
    NonRetryableError,
    WorkflowEngine,
    WorkflowFailedError,
    WorkflowIR,
    current_context,
)
from itonami.storage import Storage

ORDER: dict[str, Any] = {
    "workflow": {
        "id": "order_processing",
        "name": "Order processing",
        "version": "1.0.0",
        "inputs": [
            {"name": "orderId", "type": "string", "required": True},
            {"name": "amount", "type": "number", "required": True},
        ],
        "outputs": [
            {"name": "confirmation", "type": "string", "source": "$.steps.confirm.output.id"}
        ],
        "strategy": {
            "op": "saga",
            "main_flow": {
                "op": "seq",
                "strategies": [
                    {
                        "op": "activity",
                        "id": "validate",
                        "activity_ref": "validate_order",
                        "input_mapping": {"order_id": "$.inputs.orderId"},
                    },
                    {
                        "op": "parallel",
                        "id": "charge_and_reserve",
                        "branches": [
                            {
                                "op": "activity",
                                "id": "payment",
                                "activity_ref": "process_payment",
                                "input_mapping": {"amount": "$.inputs.amount"},
                                "compensation": {"op": "activity", "activity_ref": "refund"},
                            },
                            {
                                "op": "activity",
                                "id": "inventory",
                                "activity_ref": "reserve_inventory",
                                "input_mapping": {"order_id": "$.inputs.orderId"},
                                "compensation": {"op": "activity", "activity_ref": "release"},
                            },
                        ],
                    },
                    {"op": "activity", "id": "confirm", "activity_ref": "send_confirmation"},
                ],
            },
            "compensation": {"op": "activity", "activity_ref": "notify_failure"},
        },
    }
}

APPROVAL: dict[str, Any] = {
    "workflow": {
        "id": "approval",
        "name": "Expense approval",
        "version": "2",
        "inputs": [{"name": "amount", "type": "number", "required": True}],
        "strategy": {
            "op": "seq",
            "strategies": [
                {
                    "op": "activity",
                    "id": "check",
                    "activity_ref": "validate_order",
                    "input_mapping": {"order_id": "expense"},
                },
                {
                    "op": "decision",
                    "id": "size",
                    "conditions": [
                        {
                            "condition": "inputs.amount > 1000",
                            "branch": {
                                "op": "wait",
                                "id": "manager_approval",
                                "condition": {"type": "signal", "signal_name": "approve"},
                            },
                        }
                    ],
                    "default_branch": {
                        "op": "activity",
                        "id": "auto_approve",
                        "activity_ref": "send_confirmation",
                    },
                },
                {"op": "activity", "id": "pay_out", "activity_ref": "send_confirmation"},
            ],
        },
    }
}

BATCH: dict[str, Any] = {
    "workflow": {
        "id": "batch",
        "name": "Batch of items",
        "version": "1",
        "inputs": [{"name": "items", "type": "array", "required": True}],
        "strategy": {
            "op": "map",
            "id": "each",
            "items": "$.inputs.items",
            "max_concurrency": 2,
            "strategy": {
                "op": "activity",
                "id": "handle",
                "activity_ref": "reserve_inventory",
                "input_mapping": {"order_id": "$.item"},
            },
        },
    }
}


SHIPMENT: dict[str, Any] = {
    "workflow": {
        "id": "shipment",
        "name": "Shipment",
        "version": "1",
        "inputs": [{"name": "items", "type": "array", "required": True}],
        "strategy": {
            "op": "seq",
            "strategies": [
                {
                    "op": "subworkflow",
                    "id": "pack",
                    "workflow_ref": "batch",
                    "version": "1",
                    "input_mapping": {"items": "$.inputs.items"},
                },
                {"op": "activity", "id": "ship", "activity_ref": "send_confirmation"},
            ],
        },
    }
}


def registry() -> ActivityRegistry:
    reg = ActivityRegistry()

    @reg.activity()
    def validate_order(order_id: str) -> dict[str, Any]:
        return {"valid": True, "order": order_id}

    # A declined payment fails only once its sibling reserved the stock, so
    # the demo's history is the same on every run (reserved, then undone).
    reserved: dict[str, asyncio.Event] = {}

    def reservation(execution_id: str) -> asyncio.Event:
        return reserved.setdefault(execution_id, asyncio.Event())

    @reg.activity()
    async def process_payment(amount: float) -> dict[str, Any]:
        if amount > 500:
            await asyncio.wait_for(reservation(current_context().execution_id).wait(), 30)
            raise NonRetryableError("card declined")
        return {"charged": amount}

    @reg.activity()
    async def reserve_inventory(order_id: str) -> dict[str, Any]:
        reservation(current_context().execution_id).set()
        return {"reserved": order_id}

    @reg.activity()
    def send_confirmation() -> dict[str, Any]:
        return {"id": "CONF-1"}

    for undo in ("refund", "release", "notify_failure"):
        reg.register(lambda **_: {"undone": True}, name=undo)
    return reg


def definitions() -> dict[str, WorkflowIR]:
    return {
        "order": WorkflowIR.from_dict(ORDER),
        "approval": WorkflowIR.from_dict(APPROVAL),
        "batch": WorkflowIR.from_dict(BATCH),
        "shipment": WorkflowIR.from_dict(SHIPMENT),
    }


def engine(url: str | Callable[[], Storage], **builder: Any) -> WorkflowEngine:
    """An engine with the demo activities on ``url`` (or a fresh store from a factory)."""
    b = WorkflowEngine.builder().with_storage(url if isinstance(url, str) else url())
    b.with_activities(registry()).with_workflows([definitions()["batch"]])
    for name, value in builder.items():
        getattr(b, f"with_{name}")(value)
    return b.build()


async def populate(url: str | Callable[[], Storage]) -> dict[str, str]:
    """Run the demo executions on ``url``; the approval is left waiting for
    its ``approve`` signal. Returns their ids by name."""
    irs = definitions()
    ids: dict[str, str] = {}
    async with engine(url) as eng:
        ids["completed"] = await eng.start_workflow(
            irs["order"], {"orderId": "ORD-1", "amount": 120}, execution_id="order-ok"
        )
        ids["compensated"] = await eng.start_workflow(
            irs["order"], {"orderId": "ORD-2", "amount": 900}, execution_id="order-declined"
        )
        ids["batch"] = await eng.start_workflow(
            irs["batch"], {"items": ["a", "b", "c"]}, execution_id="batch-1"
        )
        ids["parent"] = await eng.start_workflow(
            irs["shipment"], {"items": ["x", "y"]}, execution_id="shipment-1"
        )
        for name in ("completed", "compensated", "batch", "parent"):
            with contextlib.suppress(WorkflowFailedError):
                await eng.wait_for_completion(ids[name])
        ids["waiting"] = await eng.start_workflow(
            irs["approval"], {"amount": 2500}, execution_id="approval-big"
        )
        await waiting(eng, ids["waiting"])
    return ids


async def waiting(eng: WorkflowEngine, execution_id: str) -> None:
    """Until the execution's wait is open in its state (committed by then)."""
    while not (await eng.query(execution_id)).get("waits"):
        await asyncio.sleep(0.01)
