"""How often does a stream continued on another backend read as if nothing had happened?

One real vLLM (the demo model, greedy decoding) behind two cutting proxies, our router in front
(`vllm-fleet router`, round-robin). A proxy forwards a request's first ``--cut`` SSE events,
then resets both connections, as a backend that dies mid-stream; a continuation (any body the
bench did not send itself) passes untouched. So every streamed request through the router is
cut once and continued (resume.py) — on the same engine here, which is what the comparison
needs: the continued text against the same request streamed uninterrupted, straight from vLLM.

Each request form the router continues is measured (``--forms``): a chat (continued with
``continue_final_message``), a completion with a text prompt (the text appended), and one whose
prompt is token ids (the text's ids from vLLM's /tokenize appended).

Printed per form and cut depth: continued streams that ended whole, those equal to the
uninterrupted text, and the mean share of the uninterrupted text they match before differing.

    python benchmarks/bench_continuation.py [--prompts 12] [--cut 3,8,16] [--max-tokens 48] [--forms chat,text,ids]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".cache/demo/smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
    "What does a CPU do?", "Give two uses of copper.", "What is photosynthesis?",
    "How many legs does a spider have?", "What is the boiling point of water?", "Who wrote Hamlet?",
    "What is a prime number?", "Why do we have seasons?", "What is the largest ocean?",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CuttingProxy:
    """Forwards to ``upstream``; cuts the answer to one of ``originals`` (request bodies) after ``cut`` events;
    any other body (a continuation) passes."""

    def __init__(self, upstream_port: int, cut: int, originals: set[bytes]) -> None:
        self.upstream_port, self.cut, self.originals = upstream_port, cut, originals
        self.cuts = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        request = bytearray()

        async def upstream() -> None:
            while data := await reader.read(65536):
                request.extend(data)
                up_writer.write(data)
                await up_writer.drain()

        pump = asyncio.ensure_future(upstream())
        try:
            seen = 0
            while data := await up_reader.read(65536):
                current = request[request.rfind(b"POST /") :]  # the connection is kept alive: the latest request
                cutting = bytes(current.partition(b"\r\n\r\n")[2]) in self.originals
                if cutting and seen + data.count(b"\n\n") >= self.cut:
                    keep = data
                    for _ in range(self.cut - seen):
                        keep = keep[keep.index(b"\n\n") + 2 :]
                    writer.write(data[: len(data) - len(keep)])
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    self.cuts += 1
                    _reset(writer)
                    return
                seen += data.count(b"\n\n") if cutting else 0
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
            up_writer.close()
            with contextlib.suppress(Exception):
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    import struct

    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def request_body(session: aiohttp.ClientSession, engine: str, form: str, question: str, max_tokens: int) -> bytes:
    """The streamed greedy request of ``form`` (chat, text or ids) asking ``question``."""
    body: dict = {"model": "smollm2", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    messages = [{"role": "user", "content": question}]
    if form == "chat":
        return json.dumps(body | {"messages": messages}).encode()
    # A completion of the same chat, its template applied by vLLM: as token ids, or as their text.
    async with session.post(f"{engine}/tokenize", json={"model": "smollm2", "messages": messages}) as resp:
        ids = (await resp.json())["tokens"]
    if form == "ids":
        return json.dumps(body | {"prompt": ids}).encode()
    async with session.post(f"{engine}/detokenize", json={"model": "smollm2", "tokens": ids}) as resp:
        return json.dumps(body | {"prompt": (await resp.json())["prompt"]}).encode()


async def stream_text(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[str, bool]:
    path = "/v1/chat/completions" if b'"messages"' in body else "/v1/completions"
    text, done = [], False
    try:
        async with session.post(f"{url}{path}", data=body, headers={"content-type": "application/json"}) as resp:
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b"data: "):
                    for choice in json.loads(line[6:]).get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    except aiohttp.ClientError:
        done = False
    return "".join(text), done


def common_share(a: str, b: str) -> float:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return n / max(1, len(b))


async def measure(engine_port: int, forms: list[str], cuts: list[int], prompts: int, max_tokens: int) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        direct = f"http://127.0.0.1:{engine_port}"
        for form in forms:
            bodies = [await request_body(session, direct, form, q, max_tokens) for q in QUESTIONS[:prompts]]
            reference = [await stream_text(session, direct, body) for body in bodies]
            for cut in cuts:
                rows.append(await cut_and_continue(session, engine_port, form, cut, bodies, reference))
    return rows


async def cut_and_continue(
    session: aiohttp.ClientSession,
    engine_port: int,
    form: str,
    cut: int,
    bodies: list[bytes],
    reference: list[tuple[str, bool]],
) -> dict:
    """Each of ``bodies`` through the router, cut after ``cut`` events and continued: how it compares."""
    proxies = [CuttingProxy(engine_port, cut, set(bodies)) for _ in range(2)]
    servers = [await asyncio.start_server(p.serve, "127.0.0.1", 0) for p in proxies]
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    router_port = free_port()
    backends = [arg for u in urls for arg in ("--backend", u)]
    router = subprocess.Popen(
        [sys.executable, "-m", "vllm_fleet.cli", "router", *backends, "--port", str(router_port),
         "--policy", "round-robin", "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        routed = f"http://127.0.0.1:{router_port}"
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{routed}/health") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.2)
        results = [await stream_text(session, routed, body) for body in bodies]
    finally:
        os.killpg(router.pid, signal.SIGTERM)
        router.wait()
        for server in servers:
            server.close()
    pairs = list(zip(results, reference, strict=True))
    shares = [common_share(text, ref) for (text, _), (ref, _) in pairs]
    return {
        "form": form, "cut_after_events": cut, "streams": len(results), "cut": sum(p.cuts for p in proxies),
        "ended_whole": sum(1 for _, done in results if done),
        "equal_to_uninterrupted": sum(1 for (text, _), (ref, _) in pairs if text == ref),
        "mean_matching_share": round(sum(shares) / len(shares), 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--cut", default="3,8,16", help="Events forwarded before the cut (a list).")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--forms", default="chat,text,ids", help="Request forms (chat, text, ids), a list.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still `down` the engine it started
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "continuation.yaml"
        spec.write_text(
            f"name: continuation\nmodel: {{source: {MODEL.as_uri()}, served_name: smollm2}}\n"
            "engine: {dtype: float32, max_model_len: 1024}\n"
            f"cache: {{dir: {tmp}/cache}}\nlocal: {{base_port: {port}, supervise: false}}\n"
            "router: {enabled: false}\n"
        )
        cli = [sys.executable, "-m", "vllm_fleet.cli"]
        started = time.monotonic()
        subprocess.run([*cli, "up", str(spec), "--no-verify", "--json"], check=True, stdout=subprocess.DEVNULL)
        print(f"vLLM up in {time.monotonic() - started:.0f} s on port {port}", file=sys.stderr)
        try:
            cuts = [int(c) for c in args.cut.split(",")]
            rows = asyncio.run(measure(port, args.forms.split(","), cuts, args.prompts, args.max_tokens))
        finally:
            subprocess.run([*cli, "down", str(spec)], stdout=subprocess.DEVNULL)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'form':>5} {'cut after':>10} {'streams':>8} {'cut':>4} {'whole':>6} {'equal':>6} {'matching':>9}")
    for r in rows:
        print(
            f"{r['form']:>5} {r['cut_after_events']:>10} {r['streams']:>8} {r['cut']:>4} {r['ended_whole']:>6} "
            f"{r['equal_to_uninterrupted']:>6} {r['mean_matching_share']:>9.3f}"
        )


if __name__ == "__main__":
    main()
