"""The OpenAI/vLLM wire, parsed in one place for verify, bench, drain and the router.

sse.py         Server-Sent Events: ``data:`` payloads of a streamed response
prometheus.py  vLLM's metric names and the Prometheus text exposition
openai.py      endpoint URLs (server root or /v1 base), request bodies, response fields
health.py      is a server up: /health, /v1/models, and what to say when nothing listens
"""
