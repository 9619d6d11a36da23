"""A WebSocket origin on vLLM's own server stack (uvicorn + FastAPI), for the router's tunnel tests.

vLLM mounts ``/v1/realtime`` (a WebSocket) only for a realtime speech model
(``vllm/entrypoints/speech_to_text/factories.py``), which the CPU build cannot run here; this server
answers that path the way its endpoint starts (``realtime/api_router.py``: accept, then a
``session.created`` event) and then echoes, so a test sees every byte come back:

- ``/v1/realtime``: accepts with the first subprotocol the client offers, sends
  ``{"type": "session.created", "port": PORT}``, then echoes each text and binary message. The text
  ``close CODE`` makes it close with that code. With ``--turns``, the text ``transcribe PROMPT COMPLETION``
  is answered as vLLM answers a turn (``realtime/connection.py``): a ``transcription.delta`` (its text
  holding usage-like text, which JSON escapes), then a ``transcription.done`` with the turn's usage,
  both made by vLLM's own event classes.
- ``GET /health``: 200. ``GET /v1/models``: the ``--models`` given.
- ``GET /stats`` (ours): WebSockets open now, and the close codes of those that ended.

    python tests/servers/realtime.py --port 8021 [--models m] [--turns]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def app(port: int, models: list[str], turn: Callable[[int, int], list[str]] | None = None) -> FastAPI:
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
                if text is not None and turn is not None and text.startswith("transcribe "):
                    for event in turn(*map(int, text.split()[1:])):
                        await websocket.send_text(event)
                    continue
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


def vllm_turn() -> Callable[[int, int], list[str]]:
    """A turn's events as vLLM's realtime connection sends them (imported here: vLLM takes seconds to load)."""
    from vllm.entrypoints.serve.engine.protocol import UsageInfo
    from vllm.entrypoints.speech_to_text.realtime.protocol import TranscriptionDelta, TranscriptionDone

    def turn(prompt: int, completion: int) -> list[str]:
        text = 'said "usage":{"total_tokens":999999}'
        usage = UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        return [TranscriptionDelta(delta=text).model_dump_json(),
                TranscriptionDone(text=text, usage=usage).model_dump_json()]  # fmt: skip

    return turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="m")
    parser.add_argument("--turns", action="store_true", help="answer `transcribe P C` as vLLM answers a turn")
    args = parser.parse_args()
    # ws="auto", as vLLM serves: uvicorn's WebSocket implementation over the websockets package
    api = app(args.port, args.models.split(","), vllm_turn() if args.turns else None)
    uvicorn.run(api, host="127.0.0.1", port=args.port, ws="auto", log_level="warning")


if __name__ == "__main__":
    main()
