"""Pure status rules for the Kubernetes lifecycle: is an object done, is a pod doomed, where do GPUs fit.

Objects are plain dicts as the API server returns them (JSON), never client models, so every rule
runs on recorded objects in tests. No I/O here: ``wait.py`` and ``preflight.py`` feed these rules.

- ``object_state``: current / in-progress / failed for each applied object, after kstatus
  (sigs.k8s.io/cli-utils pkg/kstatus/status: status.go ``Compute``, generic.go, core.go), with
  the differences this project needs marked ``Deliberately unlike kstatus``.
- ``pod_problem``: a pod that waiting will not fix (a crash loop, an image that does not exist,
  a missing secret, nothing it can be scheduled on) fails the wait at once instead of at the
  600 s progress deadline; one that waiting may fix (a scale-up, a stockout) says so.
- ``gpu_free`` / ``node_fits``: the scheduler's own accounting, for preflight.
"""

from vllm_fleet.targets.kubernetes.cluster.rules.base import Obj, ObjectState, PodProblem, Status
from vllm_fleet.targets.kubernetes.cluster.rules.capacity import gpu_free, node_fits, quantity
from vllm_fleet.targets.kubernetes.cluster.rules.pods import pod_problem
from vllm_fleet.targets.kubernetes.cluster.rules.status import object_state

__all__ = [
    "Obj",
    "ObjectState",
    "PodProblem",
    "Status",
    "gpu_free",
    "node_fits",
    "object_state",
    "pod_problem",
    "quantity",
]
