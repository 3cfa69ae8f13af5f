"""The engine: interpreter, scheduler and clock."""

from .clock import Clock, SystemClock, TestClock
from .cluster import Balancer, ClusterHealth, LeastLoadedBalancer, RoundRobinBalancer
from .engine import Execution, WorkflowEngine, WorkflowEngineBuilder
from .sync import SyncWorkflowEngine

__all__ = [
    "Balancer",
    "Clock",
    "ClusterHealth",
    "Execution",
    "LeastLoadedBalancer",
    "RoundRobinBalancer",
    "SyncWorkflowEngine",
    "SystemClock",
    "TestClock",
    "WorkflowEngine",
    "WorkflowEngineBuilder",
]
