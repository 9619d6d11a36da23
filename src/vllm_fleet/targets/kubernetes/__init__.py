"""The Kubernetes target: ``manifests/`` renders a Plan to plain objects (pure, no client);
``target.py`` is the Target, whose cluster I/O the lifecycle issue fills."""
