"""Prometheus metrics of the engine and of a store (the ``metrics`` extra).

The engine calls a :class:`Recorder` at the few places where what is
measured happens (``docs/architecture.md``): the lifecycle table's
transitions, the journal's commits, an activity's attempts, a run's start
and end. The default recorder, :data:`NOOP`, does nothing and imports
nothing; ``WorkflowEngineBuilder.with_metrics()`` swaps in a
:class:`PrometheusRecorder` on a ``prometheus_client`` registry (the global
one unless given), which is the only place ``prometheus_client`` is
imported.

What a store holds (executions by status, the ready queue, nodes) is read
at scrape time instead: :func:`store_metrics` (what ``itonami serve``
exposes on ``/metrics``, with the engine metrics of its own process).

Names follow the Temporal SDK's metrics, prefixed ``itonami_``;
docs/operations.md lists them.

    from itonami.metrics import asgi_app
    app.mount("/metrics", asgi_app())  # the engine metrics of this process
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .storage import Storage

__all__ = [
    "NOOP",
    "PrometheusRecorder",
    "Recorder",
    "asgi_app",
    "recorder_for",
    "store_metrics",
]

#: Seconds: from a millisecond (a local commit) to minutes (a slow activity).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Seconds a workflow takes end to end: up to days.
WORKFLOW_BUCKETS = (
    0.01,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6 * 3600.0,
    86400.0,
    7 * 86400.0,
)
#: Events per commit (the group size).
GROUP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)

_TERMINAL = ("completed", "failed", "cancelled", "timed_out", "compensated")


class Recorder:
    """What the engine reports; this base records nothing (the default).

    Latencies are in seconds. An activity's and a commit's are measured on
    the process's monotonic clock; a workflow's end-to-end latency on the
    engine's clock, from the creation recorded in its history (so it spans
    restarts, and a test clock's skipped time counts).
    """

    __slots__ = ()

    #: False for the no-op recorder: callers may skip preparing arguments.
    enabled = False

    def workflow_started(self, workflow_id: str) -> None:
        """An execution of ``workflow_id`` was started."""

    def workflow_ended(self, workflow_id: str, status: str, seconds: float | None) -> None:
        """An execution reached the terminal ``status`` after ``seconds``."""

    def activity_attempt(
        self, activity: str, schedule_to_start: float, seconds: float, ok: bool
    ) -> None:
        """One attempt of ``activity`` ran for ``seconds``, ``schedule_to_start``
        after it was scheduled; ``ok`` when it succeeded."""

    def activity_retry(self, activity: str) -> None:
        """A failed attempt of ``activity`` is retried."""

    def commit(self, seconds: float, events: int) -> None:
        """A commit of ``events`` events took ``seconds`` (submit to durable)."""

    def phase(self, old: str | None, new: str | None) -> None:
        """An execution moved between lifecycle phases (None: not in the table)."""

    def signal_delivered(self) -> None:
        """A signal was recorded for an execution."""

    def event_delivered(self) -> None:
        """An external event was taken by an open wait."""

    def timer_fired(self) -> None:
        """A durable timer fired."""

    def lease_takeovers(self, count: int) -> None:
        """This engine took over ``count`` executions whose owner's lease had expired."""

    def fenced_write(self) -> None:
        """A commit was refused: another process holds the execution's lease now."""


#: The recorder of an engine without metrics.
NOOP = Recorder()


class PrometheusRecorder(Recorder):
    """Records into ``prometheus_client`` metrics on one registry.

    One per registry (:func:`recorder_for`): every engine of a process that
    uses the same registry adds to the same series.
    """

    __slots__ = (
        "activity_failed",
        "activity_latency",
        "activity_retries",
        "activity_schedule_to_start",
        "commit_events",
        "commit_latency",
        "ended",
        "events",
        "executions",
        "fenced",
        "signals",
        "started",
        "takeovers",
        "timers",
        "workflow_latency",
    )

    enabled = True

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        reg = registry
        wf = ["workflow_id"]
        self.started = Counter(
            "itonami_workflow_started", "Workflow executions started", wf, registry=reg
        )
        self.ended = {
            status: Counter(
                f"itonami_workflow_{status}",
                f"Workflow executions that ended {status.replace('_', ' ')}",
                wf,
                registry=reg,
            )
            for status in _TERMINAL
        }
        self.workflow_latency = Histogram(
            "itonami_workflow_endtoend_latency_seconds",
            "Workflow execution time from start to its terminal event (engine clock)",
            ["workflow_id", "status"],
            buckets=WORKFLOW_BUCKETS,
            registry=reg,
        )
        act = ["activity"]
        self.activity_latency = Histogram(
            "itonami_activity_execution_latency_seconds",
            "Time one activity attempt ran",
            act,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.activity_schedule_to_start = Histogram(
            "itonami_activity_schedule_to_start_latency_seconds",
            "Time from scheduling an activity attempt to its start (the commit before it)",
            act,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.activity_failed = Counter(
            "itonami_activity_execution_failed", "Activity attempts that failed", act, registry=reg
        )
        self.activity_retries = Counter(
            "itonami_activity_retries", "Failed activity attempts retried", act, registry=reg
        )
        self.executions = Gauge(
            "itonami_executions",
            "Unfinished executions this process holds, by lifecycle phase",
            ["phase"],
            registry=reg,
        )
        self.commit_latency = Histogram(
            "itonami_commit_latency_seconds",
            "Time from handing a commit to the store to it being durable",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.commit_events = Histogram(
            "itonami_commit_events",
            "Events per commit of one execution (the group size)",
            buckets=GROUP_BUCKETS,
            registry=reg,
        )
        self.signals = Counter("itonami_signals_delivered", "Signals recorded", registry=reg)
        self.events = Counter(
            "itonami_events_delivered",
            "External events taken by an open wait",
            registry=reg,
        )
        self.timers = Counter("itonami_timers_fired", "Durable timers fired", registry=reg)
        self.takeovers = Counter(
            "itonami_lease_takeovers",
            "Executions taken over from an owner whose lease expired",
            registry=reg,
        )
        self.fenced = Counter(
            "itonami_fenced_writes",
            "Commits refused because another process holds the lease",
            registry=reg,
        )
        for phase in ("resuming", "live", "parked", "backoff", "broken"):
            self.executions.labels(phase)  # present at 0 before the first execution

    def workflow_started(self, workflow_id: str) -> None:
        self.started.labels(workflow_id).inc()

    def workflow_ended(self, workflow_id: str, status: str, seconds: float | None) -> None:
        counter = self.ended.get(status)
        if counter is not None:
            counter.labels(workflow_id).inc()
        if seconds is not None:
            self.workflow_latency.labels(workflow_id, status).observe(max(seconds, 0.0))

    def activity_attempt(
        self, activity: str, schedule_to_start: float, seconds: float, ok: bool
    ) -> None:
        self.activity_schedule_to_start.labels(activity).observe(schedule_to_start)
        self.activity_latency.labels(activity).observe(seconds)
        if not ok:
            self.activity_failed.labels(activity).inc()

    def activity_retry(self, activity: str) -> None:
        self.activity_retries.labels(activity).inc()

    def commit(self, seconds: float, events: int) -> None:
        self.commit_latency.observe(seconds)
        self.commit_events.observe(events)

    def phase(self, old: str | None, new: str | None) -> None:
        if old is not None:
            self.executions.labels(old).dec()
        if new is not None:
            self.executions.labels(new).inc()

    def signal_delivered(self) -> None:
        self.signals.inc()

    def event_delivered(self) -> None:
        self.events.inc()

    def timer_fired(self) -> None:
        self.timers.inc()

    def lease_takeovers(self, count: int) -> None:
        self.takeovers.inc(count)

    def fenced_write(self) -> None:
        self.fenced.inc()


_recorders: weakref.WeakKeyDictionary[Any, PrometheusRecorder] = weakref.WeakKeyDictionary()


def recorder_for(registry: CollectorRegistry | None = None) -> PrometheusRecorder:
    """The recorder of ``registry`` (default: ``prometheus_client``'s global
    one), made on first use: a registry accepts each metric name once."""
    try:
        from prometheus_client import REGISTRY
    except ImportError as e:
        raise ImportError(
            f"metrics need the metrics extra (pip install 'itonami[metrics]'): {e}"
        ) from e
    reg = REGISTRY if registry is None else registry
    rec = _recorders.get(reg)
    if rec is None:
        rec = _recorders[reg] = PrometheusRecorder(reg)
    return rec


def asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving ``registry`` (default: the global one) in the
    Prometheus text format: mount it at ``/metrics``."""
    from prometheus_client import REGISTRY, make_asgi_app

    return make_asgi_app(REGISTRY if registry is None else registry)


class _Snapshot:
    """A custom collector over values read from a store just before a scrape
    (``collect`` cannot await the store itself)."""

    def __init__(self, statuses: dict[str, int], stats: Any) -> None:
        self.statuses = statuses
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        by_status = GaugeMetricFamily(
            "itonami_store_executions", "Executions in the store, by status", labels=["status"]
        )
        for status in ("running", *_TERMINAL):
            by_status.add_metric([status], self.statuses.get(status, 0))
        for status, n in sorted(self.statuses.items()):
            if status not in _TERMINAL and status != "running":
                by_status.add_metric([status], n)
        yield by_status
        stats = self.stats
        yield GaugeMetricFamily(
            "itonami_store_ready_executions",
            "Executions with work to do now that no live lease holds (the ready queue)",
            value=stats.ready,
        )
        yield GaugeMetricFamily(
            "itonami_store_ready_oldest_age_seconds",
            "How long the oldest ready execution has waited",
            value=stats.oldest_ready_age,
        )
        yield GaugeMetricFamily(
            "itonami_store_waiting_for_capability",
            "Ready executions that no live node can run (a capability is missing)",
            value=len(stats.waiting_for),
        )
        nodes = GaugeMetricFamily(
            "itonami_store_nodes", "Registered nodes, by health", labels=["status"]
        )
        for health in ("healthy", "suspect", "dead"):
            nodes.add_metric([health], sum(1 for n in stats.nodes if n.status == health))
        yield nodes
        inflight = GaugeMetricFamily(
            "itonami_store_node_inflight", "Executions each node holds", labels=["node"]
        )
        for n in stats.nodes:
            inflight.add_metric([n.node_id], n.inflight)
        yield inflight
        yield CounterMetricFamily(
            "itonami_store_lease_reassignments",
            "Leases taken over from an expired owner, by every process on the store",
            value=stats.reassignments,
        )
        yield CounterMetricFamily(
            "itonami_store_fenced_writes",
            "Writes refused by a fence, by every process on the store",
            value=stats.fenced_writes,
        )


async def store_metrics(
    storage: Storage, *, suspect_after: float = 15.0, dead_after: float = 60.0
) -> bytes:
    """The store's gauges and counters, read now, in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    statuses = await storage.count_executions()
    stats = await storage.cluster_stats(suspect_after=suspect_after, dead_after=dead_after)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Snapshot(statuses, stats))
    out: bytes = generate_latest(reg)
    return out
