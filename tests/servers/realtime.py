"""A WebSocket origin on vLLM's own server stack (uvicorn + FastAPI), for the router's tunnel tests.

vLLM mounts ``/v1/realtime`` (a WebSocket) only for a realtime speech model
(``vllm/entrypoints/speech_to_text/factories.py``), which the CPU build cannot run here; this server
answers that path the way its endpoint starts (``realtime/api_router.py``: accept, then a
``session.created`` event) and then echoes, so a test sees every byte come back:

- ``/v1/realtime``: accepts with the first subprotocol the client offers, sends
  ``{"type": "session.created", "port": PORT}``, then echoes each text and binary message. The text
  ``close CODE`` makes it close with that code.
- ``GET /health``: 200. ``GET /v1/models``: the ``--models`` given.
- ``GET /stats`` (ours): WebSockets open now, and the close codes of those that ended.

    python tests/servers/realtime.py --port 8021 [--models m]
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def app(port: int, models: list[str]) -> FastAPI:
    api = FastAPI()
    stats: dict[str, Any] = {"open": 0, "closed": []}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {}

    @api.get("/v1/models")
    async def listed() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in models]}

    @api.get("/stats")
    async def counts() -> dict[str, Any]:
        return stats

    @api.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or [None]
        await websocket.accept(subprotocol=offered[0])
        stats["open"] += 1
        code = 1000
        try:
            await websocket.send_json({"type": "session.created", "port": port})
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1000)
                    break
                text, data = message.get("text"), message.get("bytes")
                if text is not None and text.startswith("close "):
                    code = int(text.split()[1])
                    await websocket.close(code)
                    break
                if text is not None:
                    await websocket.send_text(text)
                elif data is not None:
                    await websocket.send_bytes(data)
        except WebSocketDisconnect as gone:
            code = gone.code
        finally:
            stats["open"] -= 1
            stats["closed"].append(code)

    return api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="m")
    args = parser.parse_args()
    # ws="auto", as vLLM serves: uvicorn's WebSocket implementation over the websockets package
    uvicorn.run(app(args.port, args.models.split(",")), host="127.0.0.1", port=args.port, ws="auto",
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
