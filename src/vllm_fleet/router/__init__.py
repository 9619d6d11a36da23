"""The router: one OpenAI-compatible endpoint in front of every replica.

body (what a request is routed by) · backends (the pool: health, ejection, drain, load) ·
policies (round-robin, least-load, prefix affinity with bounded load, session) · proxy (one
request: choose, retry before the first byte, stream back) · resume (a stream continued on
another backend) · server (the routes on wire.http1_server, graceful shutdown) · admin (backends, drain,
registry reload) · access (the registry: routes, API keys, limits) · discovery (Kubernetes
EndpointSlices) · chat (the page at /) · metrics (Prometheus) · config.
"""
