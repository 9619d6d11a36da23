"""The Kubernetes target. Rendering works today (``manifests``); applying, waiting, status and
endpoints through the cluster are not built yet, and each says so with what to do instead,
so that nothing silently tests 127.0.0.1 for a spec that runs on a cluster.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from vllm_fleet.targets.base import QUIET, Finding, Replica, ReplicaStatus, Reporter, Target, UpResult, not_built

RENDER_INSTEAD = "render the manifests and apply them: vllm-fleet render SPEC -o DIR && kubectl apply -k DIR"


class KubernetesTarget(Target):
    """A Plan on a cluster."""

    def _instead(self, what: str, fix: str = RENDER_INSTEAD) -> Exception:
        return not_built("kubernetes", what, fix.replace("SPEC", self._spec_args()))

    @property
    def _ns(self) -> str:
        return self.plan.spec.kubernetes.namespace

    def _spec_args(self) -> str:
        return f"SPEC{' --env ' + self.plan.env if self.plan.env else ''}"

    async def preflight(self) -> list[Finding]:
        raise self._instead("preflight")

    async def up(self, report: Reporter = QUIET) -> UpResult:
        raise self._instead("up")

    async def down(self) -> list[Replica]:
        raise self._instead("down", "kubectl delete -k DIR (the directory `vllm-fleet render -o DIR` wrote)")

    async def status(self) -> list[ReplicaStatus]:
        raise self._instead(
            "status", f"kubectl -n {self._ns} get deploy,pods -l app.kubernetes.io/name={self.plan.name}"
        )

    def endpoints(self) -> AbstractAsyncContextManager[list[str]]:
        port = self.plan.spec.kubernetes.port
        raise self._instead(
            "reaching the replicas (port-forward)",
            f"forward a port and pass the URL: kubectl -n {self._ns} port-forward svc/{self.plan.name} 8000:{port}, "
            "then give http://127.0.0.1:8000 instead of the spec",
        )

    async def restart(self, report: Reporter = QUIET) -> UpResult:
        raise self._instead("restart", f"kubectl -n {self._ns} rollout restart deployment/{self.plan.name}")

    async def doctor(self) -> list[Finding]:
        raise self._instead("doctor", f"kubectl -n {self._ns} describe pods -l app.kubernetes.io/name={self.plan.name}")
