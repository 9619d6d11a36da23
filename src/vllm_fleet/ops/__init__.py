"""The flows of the product, written once for every target: the CLI calls these and prints.

lifecycle.py  up (preflight -> target.up -> endpoints -> verify), down, status
endpoints.py  what verify and bench load: a URL as given, or a spec's replicas through its target
drain.py      wait until a vLLM server holds no request (the pods' preStop hook)
"""
