"""Talking to a cluster: the only code that imports the Kubernetes client (lightkube, imported lazily).

client.py     connect through the standard kubeconfig chain; lightkube's errors into ours, each with the fix
objects.py    rendered dicts as lightkube objects (custom resources as generic ones), apply order, inventory
preflight.py  every check before anything is written
apply.py      server-side apply (field manager vllm-fleet), prune what is no longer rendered, delete
rules/        kstatus-style object status, doomed-pod rules and GPU accounting: pure, tested on recorded objects
wait.py       a watch until everything is current, failing fast on a doomed pod, waiting out a stockout
"""
