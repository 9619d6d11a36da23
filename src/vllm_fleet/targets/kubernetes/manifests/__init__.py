"""Kubernetes manifests rendered from a Plan: pure functions to plain dicts, one module per concern.

No I/O and no Kubernetes client here: ``render`` is pure, so it is tested against the real
schemas without a cluster. Talking to a cluster is ``targets.kubernetes.cluster``'s job.
"""
