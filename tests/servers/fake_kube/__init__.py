"""A fake Kubernetes API server for tests: narrow, honest, over real HTTP on 127.0.0.1.

The real client (lightkube's ``AsyncClient``/``Client``) talks to it through a kubeconfig::

    with FakeKube(version="1.30") as kube:
        path = kube.kubeconfig(tmp_path / "kubeconfig")
        client = lightkube.AsyncClient(config=KubeConfig.from_file(path).get())

or with the fixtures ``fake_kube`` and ``fake_kubeconfig`` (``fixture.py``).

What is where, one concern a module:

- ``server.py``: routing, authentication (bearer token, 401), authorization (a deny set, 403,
  SelfSubjectAccessReview), list/watch/get/create/update/patch/delete, discovery, pod logs,
  pod port-forward over WebSocket.
- ``store.py``: objects, the global resourceVersion, watch history and watchers, deletion.
- ``fields.py``: server-side apply field ownership and conflicts; merge, strategic and JSON patches.
- ``strategy.py``: what create and update do to an object (status, generation, defaults, names).
- ``resources.py``: the resource table; custom resources served while their CRD exists.
- ``selectors.py``: label and field selectors, node affinity, tolerations.
- ``scheduler.py``, ``kubelet.py``, ``workloads.py`` (Deployment, ReplicaSet, Job, garbage
  collector, namespace controller, pod GC), ``volumes.py`` (PV controller), ``endpointslices.py``
  (a Service's pods as EndpointSlices), ``events.py``: the components ``FakeKube.step()`` runs
  once each, or ``run_controllers()`` runs in the background.
- ``cluster.py``: ``Cluster``, the objects and the scenario methods (nodes, storage classes,
  container scripts, port-forward targets, events, the autoscaler, other users), ``step()`` and
  ``run_controllers()``.
- ``fake.py``: ``FakeKube(Cluster)``, the server thread, the kubeconfig, the deny set.

Each behaviour names the Kubernetes document or source file it follows; what is not modelled is
said where it would be, and an unmodelled API answers 501 rather than pretending.
"""

from .cluster import Cluster, ControllerLoop, parse_taint
from .fake import FakeKube
from .kubelet import ConfigError, CrashLoop, Exit, ImagePullError, NotReady, Run, Script, Starting

__all__ = [
    "Cluster",
    "ConfigError",
    "ControllerLoop",
    "CrashLoop",
    "Exit",
    "FakeKube",
    "ImagePullError",
    "NotReady",
    "Run",
    "Script",
    "Starting",
    "parse_taint",
]
