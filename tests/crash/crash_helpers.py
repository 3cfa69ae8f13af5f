"""The crash-test harness: kill the workload process with SIGKILL, restart it, check.

:func:`run_torture` runs the workload of ``crash_workload.py`` once without
crashes (the reference), then again on fresh stores while killing the child
process at random moments and at named failpoints (``ITONAMI_FAILPOINTS``),
restarting it after every kill until it exits 0. Each finished store is then
opened by a fresh engine in this process and checked against the reference
(:func:`check_round`): every execution present and terminal with the same
status, outputs and step results; one terminal event each; every activity
attempt's side effect after its start was durable and at most once; no
completed step run again; compensations only for completed steps; the Merkle
chains verify; the store's integrity check passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crash_workload as cw

import itonami
from itonami import WorkflowEngine
from itonami.storage import open_storage

WORKLOAD = Path(cw.__file__).resolve()

#: Every failpoint, as ``itonami._failpoints`` names them.
ALL_FAILPOINTS = (
    "activity.after_effect",
    "storage.mid_commit",
    "storage.after_commit",
    "snapshot.during",
    "compensation.during",
    "timer.fire",
)
#: The failpoints the engine passes whatever the storage backend.
ENGINE_FAILPOINTS = (
    "activity.after_effect",
    "snapshot.during",
    "compensation.during",
    "timer.fire",
)
#: Event kinds whose number depends on crashes (retried or re-scheduled attempts,
#: snapshots); every other event must occur exactly as in the crash-free run.
CRASH_DEPENDENT_KINDS = frozenset(
    {"activity_scheduled", "activity_started", "activity_retry_scheduled", "snapshot_taken"}
)
TERMINAL_KINDS = frozenset(
    {
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
        "workflow_timed_out",
        "workflow_compensated",
    }
)
#: The error type of an attempt that a resumed run found without an outcome.
INTERRUPTED = "AttemptInterrupted"
_COUNT_ALL = 1_000_000_000
#: Seconds after which a life that should finish on its own counts as hung.
LIFE_TIMEOUT = 10.0


def torture_kills(default: int = 50) -> int:
    """How many kills a run does: ``ITONAMI_TORTURE_KILLS`` or ``default``."""
    return int(os.environ.get("ITONAMI_TORTURE_KILLS", default))


# ---------------------------------------------------------------- stores


@dataclass
class Store:
    """Where one run of the workload keeps its data (a URL plus storage options)."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    sqlite_path: Path | None = None

    def child_args(self) -> list[str]:
        """The workload's command-line arguments naming this store."""
        args = ["--storage", self.url]
        if self.options.get("schema"):
            args += ["--schema", str(self.options["schema"])]
        return args


def sqlite_store(directory: Path) -> Store:
    """A fresh SQLite file in ``directory`` (absolute path: four slashes)."""
    path = directory.resolve() / "db.sqlite"
    return Store(f"sqlite:///{path}", sqlite_path=path)


# ---------------------------------------------------------------- lives


@dataclass
class Life:
    """One process of the workload, from start to exit or kill."""

    index: int
    mode: str  # "random", a failpoint name, or "none"
    spec: str  # the delay or the failpoint count
    pid: int = 0
    returncode: int | None = None
    killed_by_parent: bool = False
    server_restarted: bool = False
    hung: bool = False
    seconds: float = 0.0

    @property
    def crashed(self) -> bool:
        """Whether the process died without finishing (killed, or storage lost)."""
        return self.returncode != 0

    @property
    def cause(self) -> str:
        """What ended it: ``random``, a failpoint name, ``hang``, ``storage`` or ``exit``."""
        if self.returncode == 0:
            return "exit"
        if self.returncode == cw.EXIT_STORAGE:
            return "storage"
        if self.hung:
            return "hang"
        return "random" if self.killed_by_parent else self.mode


@dataclass
class RoundStats:
    """What one store saw: kills by cause and steps caught in flight by them."""

    lives: list[Life] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    orphaned: Counter[str] = field(default_factory=Counter)
    reruns: int = 0


@dataclass
class TortureReport:
    """The totals of a :func:`run_torture` run (printed by the tests)."""

    kills: int = 0
    rounds: int = 0
    lives: int = 0
    server_restarts: int = 0
    hangs: list[str] = field(default_factory=list)
    kills_by_cause: Counter[str] = field(default_factory=Counter)
    in_flight_by_cause: Counter[str] = field(default_factory=Counter)
    orphaned_by_cause: Counter[str] = field(default_factory=Counter)
    reruns: int = 0
    executions_checked: int = 0
    wall_seconds: float = 0.0

    def text(self) -> str:
        """A human-readable summary."""
        return (
            f"{self.kills} kills in {self.rounds} rounds ({self.lives} lives, "
            f"{self.server_restarts} server restarts, {len(self.hangs)} hangs, "
            f"{self.wall_seconds:.1f} s); "
            f"kills by cause {dict(self.kills_by_cause)}; activities in flight at a kill "
            f"{dict(self.in_flight_by_cause)}; attempts orphaned by a kill "
            f"{dict(self.orphaned_by_cause)}; steps whose effect ran again {self.reruns}; "
            f"{self.executions_checked} executions checked"
        )


def child_env(failpoints: str | None) -> dict[str, str]:
    """The environment of a child: this itonami importable, ``failpoints`` armed."""
    env = dict(os.environ)
    package_root = str(Path(itonami.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.pop("ITONAMI_FAILPOINTS", None)
    if failpoints:
        env["ITONAMI_FAILPOINTS"] = failpoints
    return env


def run_life(
    store: Store,
    directory: Path,
    life: Life,
    *,
    failpoints: str | None = None,
    kill_after: float | None = None,
    during: Callable[[], None] | None = None,
    extra_args: list[str] | None = None,
    hang_after: float = LIFE_TIMEOUT,
) -> Life:
    """Run the workload once; SIGKILL it after ``kill_after`` s if still running.

    ``during`` runs in a thread while the child runs (a database restart).
    A child still running after ``hang_after`` s is dumped (stacks into its
    stderr file), killed and marked ``hung``. A child that exits with anything
    but 0, SIGKILL or ``EXIT_STORAGE`` fails the test with its stderr.
    """
    cmd = [
        sys.executable,
        str(WORKLOAD),
        *store.child_args(),
        "--ledger",
        str(directory / "ledger.jsonl"),
        "--summary",
        str(directory / "summary.json"),
        *(extra_args or []),
    ]
    stderr_path = directory / f"life-{life.index}.stderr"
    t0 = time.monotonic()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, env=child_env(failpoints), stdout=subprocess.DEVNULL, stderr=err
        )
        life.pid = proc.pid
        helper = None
        failures: list[BaseException] = []
        if during is not None:
            task = during

            def guarded() -> None:
                try:
                    task()
                except BaseException as exc:
                    failures.append(exc)

            helper = threading.Thread(target=guarded, daemon=True)
            helper.start()
            life.server_restarted = True
        try:
            proc.wait(timeout=kill_after if kill_after is not None else hang_after)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                # Hung: dump its tasks and threads into its stderr, then kill it.
                for sig in (signal.SIGUSR2, signal.SIGUSR1):
                    os.kill(proc.pid, sig)
                    time.sleep(0.5)
                life.hung = True
            else:
                life.killed_by_parent = True
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if helper is not None:
            helper.join(timeout=120)
            if failures:
                raise failures[0]
    life.returncode = proc.returncode
    life.seconds = time.monotonic() - t0
    if life.returncode not in (0, -signal.SIGKILL, cw.EXIT_STORAGE):
        raise AssertionError(
            f"workload life {life.index} ({life.mode} {life.spec}) exited "
            f"{life.returncode}; stderr:\n" + stderr_path.read_text(errors="replace")
        )
    if life.returncode == -signal.SIGKILL and not (life.killed_by_parent or life.hung):
        assert life.mode in ALL_FAILPOINTS, f"life {life.index} died of SIGKILL by itself"
    return life


# ---------------------------------------------------------------- facts


@dataclass
class StepHistory:
    """What the durable history says about one activity step."""

    started: set[int] = field(default_factory=set)
    outcomes: set[int] = field(default_factory=set)
    interrupted: set[int] = field(default_factory=set)
    completed_attempts: list[int] = field(default_factory=list)
    result: Any = None


@dataclass
class ExecFacts:
    """An execution as the final store holds it."""

    status: str
    outputs: Any
    error_type: str | None
    steps: dict[str, tuple[str, Any]]
    compensations: dict[str, Any]
    semantic: Counter[tuple[str, str]]
    terminal_events: int
    activities: dict[str, StepHistory]


@dataclass
class StoreFacts:
    """Every execution of one store, plus the checks that need the live engine."""

    executions: dict[str, ExecFacts]
    verified: int


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's records; a torn (partial) record fails the test."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the ledger ends with a torn record"
    return [json.loads(line) for line in data.splitlines() if line]


def _activity_history(events: list[Any]) -> dict[str, StepHistory]:
    steps: dict[str, StepHistory] = defaultdict(StepHistory)
    for e in events:
        if e.kind == "activity_started":
            steps[e.step].started.add(e.attempt)
        elif e.kind in ("activity_completed", "activity_failed", "activity_retry_scheduled"):
            steps[e.step].outcomes.add(e.attempt)
            error = (e.data or {}).get("error") or {}
            if e.kind == "activity_retry_scheduled" and error.get("type") == INTERRUPTED:
                steps[e.step].interrupted.add(e.attempt)
            if e.kind == "activity_completed":
                steps[e.step].completed_attempts.append(e.attempt)
                steps[e.step].result = e.data["result"]
    return dict(steps)


async def collect_facts(store: Store, scratch: Path) -> StoreFacts:
    """Open the finished store with a fresh engine and read every execution.

    Also checks what needs the engine: nothing is left to resume (so opening
    runs no activity), the store's integrity check is clean, each chain
    verifies, and a replay of the stored events equals the live state.
    """
    raw = open_storage(store.url, **store.options)
    await raw.open()
    try:
        unfinished = await raw.unfinished_executions()
        assert unfinished == [], f"executions left unfinished: {unfinished}"
        problems = await raw.integrity_check()
        assert problems == [], f"storage integrity problems: {problems}"
    finally:
        await raw.close()
    scratch.mkdir(parents=True, exist_ok=True)
    ledger_path = scratch / "verify-ledger.jsonl"
    engine = (
        WorkflowEngine.builder()
        .with_storage(store.url, **store.options)
        .with_activities(cw.registry(cw.Ledger(str(ledger_path))))
        .with_workflows(cw.definitions())
        .build()
    )
    out: dict[str, ExecFacts] = {}
    verified = 0
    async with engine:
        for rec in await engine.list_executions(limit=100_000):
            eid = rec.execution_id
            state = await engine.query(eid)
            events = await engine.get_event_history(eid)
            stored = await engine.storage.read_events(eid)
            versions = await engine.get_execution_history(eid)
            assert [e.hash for e in stored] == [v.hash for v in versions], (
                f"{eid}: the engine's history differs from the stored one"
            )
            assert len(events) == len(stored) == state["version"], eid
            await engine.verify(eid)
            rebuilt = await engine.rebuild_execution_from_events(eid)
            assert (rebuilt.status, rebuilt.outputs, rebuilt.version) == (
                state["status"],
                state["outputs"],
                state["version"],
            ), f"{eid}: replay differs from the live state"
            verified += 1
            error = state.get("error")
            out[eid] = ExecFacts(
                status=state["status"],
                outputs=state["outputs"],
                error_type=error.get("type") if isinstance(error, dict) else None,
                steps={
                    path: (s.get("status"), s.get("result"))
                    for path, s in (state.get("steps") or {}).items()
                },
                compensations=state.get("compensations") or {},
                semantic=Counter(
                    (e.kind, e.step) for e in events if e.kind not in CRASH_DEPENDENT_KINDS
                ),
                terminal_events=sum(1 for e in events if e.kind in TERMINAL_KINDS),
                activities=_activity_history(events),
            )
    assert read_ledger(ledger_path) == [], "opening the finished store ran an activity"
    if store.sqlite_path is not None:
        with sqlite3.connect(store.sqlite_path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
    return StoreFacts(out, verified)


# ---------------------------------------------------------------- checks


@dataclass
class Reference:
    """The crash-free run: its facts, ledger and failpoint pass counts."""

    facts: StoreFacts
    summary: dict[str, Any]
    runs: Counter[tuple[str, str]]
    passes: dict[str, int]
    seconds: float
    ledger_records: int


def _runs(ledger: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((r["eid"], r["step"]) for r in ledger if r["phase"] == "start")


def check_round(
    ref: Reference,
    facts: StoreFacts,
    summary: dict[str, Any],
    ledger: list[dict[str, Any]],
    lives: list[Life],
) -> RoundStats:
    """Assert the claim for one store killed during ``lives``; return its statistics."""
    stats = RoundStats(lives=lives)
    by_pid = {life.pid: life for life in lives}
    # The child's own view equals the crash-free one.
    assert summary == ref.summary, "the workload's summary differs from the crash-free run"
    # No execution lost, none invented; each ended the same way, once.
    assert set(facts.executions) == set(ref.facts.executions), sorted(
        set(ref.facts.executions) ^ set(facts.executions)
    )
    for eid, want in ref.facts.executions.items():
        got = facts.executions[eid]
        assert got.terminal_events == 1, f"{eid}: {got.terminal_events} terminal events"
        assert (got.status, got.outputs, got.error_type) == (
            want.status,
            want.outputs,
            want.error_type,
        ), eid
        assert got.steps == want.steps, f"{eid}: step statuses/results differ"
        # Which steps were compensated, and how it ended; not the order, which
        # follows the order of completion and so may differ between parallel
        # branches from run to run (the engine tests check newest-first).
        got_comp = {
            p: (c.get("status"), sorted(c.get("compensated") or []))
            for p, c in got.compensations.items()
        }
        want_comp = {
            p: (c.get("status"), sorted(c.get("compensated") or []))
            for p, c in want.compensations.items()
        }
        assert got_comp == want_comp, f"{eid}: compensations {got_comp} != {want_comp}"
        assert got.semantic == want.semantic, (
            f"{eid}: events differ from the crash-free run: "
            f"missing {dict(want.semantic - got.semantic)}, "
            f"extra {dict(got.semantic - want.semantic)}"
        )
        for path, h in got.activities.items():
            assert len(h.completed_attempts) <= 1, f"{eid} {path} completed twice"
    # The ledger against the durable histories.
    starts: Counter[tuple[str, str, int]] = Counter()
    ended: set[tuple[int, str, str, int]] = set()
    for r in ledger:
        assert r["pid"] in by_pid, f"ledger record from an unknown process: {r}"
        if r["phase"] == "end":
            ended.add((r["pid"], r["eid"], r["step"], r["attempt"]))
    in_flight_kills: Counter[tuple[str, str]] = Counter()
    for r in ledger:
        if r["phase"] != "start":
            continue
        eid, path, attempt = r["eid"], r["step"], r["attempt"]
        key = (eid, path, attempt)
        starts[key] += 1
        assert starts[key] == 1, f"{eid} {path} attempt {attempt} ran twice"
        h = facts.executions[eid].activities.get(path)
        assert h is not None and attempt in h.started, (
            f"{eid} {path} attempt {attempt} ran before its start was durable"
        )
        if h.completed_attempts:
            done = h.completed_attempts[0]
            assert attempt <= done, f"{eid} {path} ran again (attempt {attempt}) after completing"
        life = by_pid[r["pid"]]
        if (r["pid"], eid, path, attempt) not in ended and life.crashed:
            stats.in_flight[life.cause] += 1
        if attempt in h.interrupted or attempt not in h.outcomes:
            # Started durably, outcome lost: only a crash explains that.
            assert life.crashed, f"{eid} {path} attempt {attempt} lost its outcome without a crash"
            stats.orphaned[life.cause] += 1
            in_flight_kills[(eid, path)] += 1
        if r["comp"]:
            target = path.removesuffix("/comp")
            compensated = facts.executions[eid].activities.get(target)
            assert compensated is not None and compensated.completed_attempts, (
                f"{eid}: compensation {path} ran for a step that never completed"
            )
    # The recorded result is the one the completing attempt produced.
    results = {
        (r["eid"], r["step"], r["attempt"]): r.get("result")
        for r in ledger
        if r["phase"] == "end" and r.get("ok")
    }
    for eid, f in facts.executions.items():
        for path, h in f.activities.items():
            if h.completed_attempts and (eid, path, h.completed_attempts[0]) in results:
                assert results[(eid, path, h.completed_attempts[0])] == h.result, (eid, path)
    # Each step ran at most as often as without crashes, plus once per crash
    # that caught it in flight (started, outcome not yet durable).
    runs = _runs(ledger)
    for key, n in runs.items():
        allowed = ref.runs[key] + in_flight_kills[key]
        assert n <= allowed, f"{key} ran {n} times, allowed {allowed}"
        stats.reruns += n > ref.runs[key]
    assert set(runs) == set(ref.runs), "the set of steps that ran differs"
    for life in lives:
        if life.crashed and life.cause not in ("storage", "hang"):
            stats.kills[life.cause] += 1
    return stats


# ---------------------------------------------------------------- the run


def run_reference(
    store: Store, directory: Path, *, extra_args: list[str] | None = None
) -> Reference:
    """The crash-free run (every failpoint armed but unreachable, to count passes)."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = ",".join(f"{p}={_COUNT_ALL}" for p in ALL_FAILPOINTS)
    life = run_life(
        store,
        directory,
        Life(0, "none", "reference"),
        failpoints=spec,
        extra_args=[*(extra_args or []), "--count-failpoints", str(_COUNT_ALL)],
    )
    assert life.returncode == 0, "the crash-free run failed:\n" + (
        directory / "life-0.stderr"
    ).read_text(errors="replace")
    summary = json.loads((directory / "summary.json").read_text())
    passes = summary["failpoint_passes"]
    facts = asyncio.run(collect_facts(store, directory))
    ledger = read_ledger(directory / "ledger.jsonl")
    statuses = Counter(f.status for f in facts.executions.values())
    assert {"completed", "compensated", "failed"} <= set(statuses), statuses
    return Reference(facts, summary["executions"], _runs(ledger), passes, life.seconds, len(ledger))


def run_torture(
    make_store: Callable[[Path], Store],
    kills: int,
    seed: int,
    workdir: Path,
    *,
    failpoints: tuple[str, ...] = ALL_FAILPOINTS,
    kills_per_round: int = 12,
    random_share: float = 0.35,
    restart_server: Callable[[], None] | None = None,
    server_restarts: int = 0,
    copies: int = 4,
) -> TortureReport:
    """Kill the workload ``kills`` times over fresh stores and check each one.

    ``make_store(dir)`` gives a fresh, empty store. Every round runs lives on
    one store: each life is killed at a random moment (share
    ``random_share``) or at a failpoint's n-th pass, until ``kills_per_round``
    kills, then runs to completion and the store is checked against the
    crash-free reference. ``restart_server`` (with ``server_restarts`` > 0)
    is called in a thread during that many lives, at a random moment.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    extra = ["--copies", str(copies)]
    ref = run_reference(make_store(workdir / "reference"), workdir / "reference", extra_args=extra)
    report = TortureReport()
    restarts_left = server_restarts if restart_server is not None else 0
    round_no = 0
    while report.kills < kills or restarts_left > 0:
        round_no += 1
        directory = workdir / f"round-{round_no}"
        directory.mkdir(parents=True)
        store = make_store(directory)
        lives: list[Life] = []
        round_kills = 0
        while True:
            index = len(lives) + 1
            during = None
            if restarts_left > 0 and restart_server is not None and rng.random() < 0.5:
                delay = rng.uniform(0.3, max(0.4, ref.seconds))
                server = restart_server

                def during(delay: float = delay, server: Callable[[], None] = server) -> None:
                    time.sleep(delay)
                    server()

                restarts_left -= 1
                report.server_restarts += 1
            if round_kills >= kills_per_round or report.kills >= kills:
                life = Life(index, "none", "")
                run_life(store, directory, life, during=during, extra_args=extra)
            elif rng.random() < random_share:
                delay = rng.uniform(0.2 * ref.seconds, 1.1 * ref.seconds)
                life = Life(index, "random", f"{delay:.3f}s")
                run_life(store, directory, life, kill_after=delay, during=during, extra_args=extra)
            else:
                point = rng.choice(failpoints)
                # Aim inside what is left: the ledger tells how far the work got.
                done = len(read_ledger(directory / "ledger.jsonl")) / max(1, ref.ledger_records)
                left = max(1.0, ref.passes.get(point, 1) * (1.0 - min(done, 0.95)))
                count = 1 + int(rng.random() * left * 0.8)
                life = Life(index, point, str(count))
                run_life(
                    store,
                    directory,
                    life,
                    failpoints=f"{point}={count}",
                    during=during,
                    extra_args=extra,
                )
            lives.append(life)
            with open(directory / "lives.jsonl", "a") as log:
                log.write(json.dumps(life.__dict__) + "\n")
            if life.hung:
                report.hangs.append((directory / f"life-{life.index}.stderr").read_text())
            elif life.returncode == -signal.SIGKILL:
                round_kills += 1
                report.kills += 1
            if life.returncode == 0:
                break
            assert len(lives) < 10 * kills_per_round + 50, "the workload makes no progress"
        summary = json.loads((directory / "summary.json").read_text())
        facts = asyncio.run(collect_facts(store, directory))
        stats = check_round(
            ref, facts, summary["executions"], read_ledger(directory / "ledger.jsonl"), lives
        )
        report.rounds += 1
        report.lives += len(lives)
        report.kills_by_cause.update(stats.kills)
        report.in_flight_by_cause.update(stats.in_flight)
        report.orphaned_by_cause.update(stats.orphaned)
        report.reruns += stats.reruns
        report.executions_checked += facts.verified
    report.wall_seconds = time.monotonic() - t0
    return report


def restart_postgres() -> None:
    """Crash-restart the test server (``pg_ctl restart -m immediate``: no clean
    shutdown, WAL recovery on start)."""
    cmd = [
        str(Path(os.environ["ITONAMI_PG_BIN"]) / "pg_ctl"),
        "-D",
        str(Path(os.environ["ITONAMI_PG_DIR"]) / "data"),
        "-m",
        "immediate",
        "-l",
        str(Path(os.environ["ITONAMI_PG_DIR"]) / "server.log"),
        "-w",
        "-t",
        "60",
        "restart",
    ]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        assert runuser is not None, "restarting the server as root needs runuser"
        cmd = [runuser, "-u", "postgres", "--", *cmd]
    # No pipes: the restarted server would hold them open for good.
    subprocess.run(
        cmd,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=90,
    )
