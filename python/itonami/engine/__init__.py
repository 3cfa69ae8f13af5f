"""The engine: interpreter, scheduler and clock."""

from .clock import Clock, SystemClock, TestClock
from .engine import Execution, WorkflowEngine, WorkflowEngineBuilder
from .sync import SyncWorkflowEngine

__all__ = [
    "Clock",
    "Execution",
    "SyncWorkflowEngine",
    "SystemClock",
    "TestClock",
    "WorkflowEngine",
    "WorkflowEngineBuilder",
]
