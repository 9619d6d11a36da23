"""The Target interface: what every place that runs engines does, so the flow in ``ops`` is written once.

    preflight   every check that can fail before anything is started or written
    up          start the replicas and wait until each is healthy (or raise, leaving nothing behind)
    down        stop everything ``up`` started
    status      each replica's state
    endpoints   URLs that reach the replicas from here, for verify and bench (a context manager:
                the Kubernetes target holds a port-forward open for as long as it is entered);
                where clients connect (the router), or ``direct``: each replica itself
    publish     make verified replicas routable (the local router's registry; in a cluster, pod
                readiness does it and this does nothing)
    restart     replace the replicas one at a time
    logs        where each process's log is (the engines', the router's)
    doctor      what is wrong, with the evidence and the fix

Targets never import each other; ``targets.target_for`` picks one for a Plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vllm_fleet.errors import NotBuilt
from vllm_fleet.plan import Plan

if TYPE_CHECKING:
    from vllm_fleet.verify import Check

Role = Literal["engine", "router", "supervisor"]
Severity = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Replica:
    """One serving process or pod: where it answers and where its log is."""

    index: int
    url: str  # server root (no /v1)
    role: Role = "engine"
    pid: int | None = None
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica and what it is doing: alive (the process or pod exists) and healthy (/health 200)."""

    replica: Replica
    alive: bool
    healthy: bool
    left_behind: int = 0  # processes of a dead replica still running (its engine's children)
    problem: str | None = None  # what is wrong, when the target can tell (a pod's crash loop, ...)
    routed: str | None = None  # the router's view of it (healthy, unhealthy, ejected, draining, not routed)
    restarts: int = 0  # times the supervisor restarted it after a crash

    @property
    def state(self) -> str:
        more = (f", router: {self.routed}" if self.routed else "") + (
            f", restarted {self.restarts}x" if self.restarts else ""
        )
        if self.healthy:
            return "healthy" + more
        if self.problem:
            return f"{'alive' if self.alive else 'not running'}: {self.problem}"
        if self.alive:
            return "alive, not healthy"
        if self.left_behind:
            return f"dead, {self.left_behind} of its processes still running (down stops them)"
        return "dead"

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.replica.url, "pid": self.replica.pid, "alive": self.alive, "healthy": self.healthy,
                "left_behind": self.left_behind, "problem": self.problem, "role": self.replica.role,
                "routed": self.routed, "restarts": self.restarts}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One check of preflight or doctor: what was found and, when it is not a pass, the fix."""

    check: str
    severity: Severity
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """One thing doctor found wrong: the cause in a line, the evidence it read, and the fix.

    ``primary`` marks a root cause; a proximate one (CrashLoopBackOff) is what the primary led to.
    """

    cause: str
    evidence: str  # the status field, event or log line read, with the object's name (and time when known)
    fix: str
    retryable: bool  # waiting will fix it
    primary: bool = True
    subject: str = ""  # which object, e.g. pod/NAME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpResult:
    """What ``up`` brought up, with notes worth printing (a prefetch's result, a fallback taken)."""

    replicas: list[Replica]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-ready details for --json (prefetch, ...)


class Reporter:
    """How a target tells a person what it is doing while it works. This one says nothing (``--json``)."""

    def phase(self, text: str) -> None:
        """A long step began (staging, waiting): shown until the next line."""

    def line(self, text: str) -> None:
        """A result worth a line of its own."""

    def replica(self, index: int, url: str, state: str) -> None:
        """Replica ``index`` at ``url`` is now in ``state`` ('healthy' when done)."""


QUIET = Reporter()


@dataclass(frozen=True)
class TargetOptions:
    """How to reach and drive a target, beyond the spec: what a command line adds for this run."""

    kubeconfig: str | None = None  # default: KUBECONFIG, ~/.kube/config, the in-cluster service account
    context: str | None = None  # default: the kubeconfig's current context
    force_conflicts: bool = False  # server-side apply takes fields another manager owns
    timeout_s: float | None = None  # the whole wait of `up` (the target's own default when None)


class Target(ABC):
    """A place that runs the replicas of one Plan."""

    def __init__(self, plan: Plan, options: TargetOptions | None = None):
        self.plan = plan
        self.options = options or TargetOptions()

    @abstractmethod
    async def preflight(self) -> list[Finding]: ...

    @abstractmethod
    async def up(self, report: Reporter = QUIET) -> UpResult: ...

    @abstractmethod
    async def down(self, purge: bool = False) -> list[Replica]:
        """Stop what ``up`` started; ``purge`` also removes what outlives a deployment (a weights cache)."""

    @abstractmethod
    async def status(self) -> list[ReplicaStatus]: ...

    @abstractmethod
    def endpoints(self, direct: bool = False) -> AbstractAsyncContextManager[list[str]]: ...

    def client_endpoints(self, started: UpResult) -> list[str]:
        """Where clients connect once ``up`` is done: each replica, unless a router stands in front."""
        return [r.url for r in started.replicas if r.role == "engine"]

    async def publish(self, report: Reporter = QUIET) -> None:  # noqa: B027 (a hook: most targets need nothing)
        """Make the verified replicas routable (a target whose router follows readiness needs nothing)."""

    @abstractmethod
    async def restart(self, report: Reporter = QUIET) -> UpResult: ...

    @abstractmethod
    async def doctor(self) -> list[Diagnosis]: ...

    def logs(self) -> list[tuple[str, str]]:
        """(name, path) of each log on this machine: the replicas', the router's."""
        raise not_built(self.plan.spec.target, "logs", "kubectl logs -l app.kubernetes.io/instance=NAME")

    async def latency_check(self) -> Check | None:
        """The SLO check measured where the clients are, when that is not from here (None: verify's own is)."""
        return None


def not_built(target: str, what: str, instead: str) -> NotBuilt:
    """The error of a target method that a later issue fills: says what works today instead."""
    return NotBuilt(f"{what} on the {target} target is not built yet", fix=instead)
