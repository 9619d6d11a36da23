"""The processes bench_router.py measures: yardstick backends, and the proxies in front of them.

Each proxy runs as its own process, pinned to one core (``os.sched_setaffinity`` on
its pid right after the start, the same as ``taskset -c CORE``), and is read from
/proc: CPU seconds as utime + stime of the process and its children
(/proc/PID/stat, fields 14 and 15; nginx's worker is a child of its master) and
RSS from /proc/PID/status VmRSS.

- ``ours``: ``vllm-fleet router --backend URL ... --no-access-log`` (one process).
- ``nginx``: Debian's nginx, one worker, an upstream keepalive pool, HTTP/1.1 to
  the backends, ``proxy_buffering off`` (streams pass as they arrive), no access log.
- ``vllm-router``: the vLLM project's Rust router (PyPI ``vllm-router``) in its own
  venv under .venv/tools/vllm-router, installed on first use; INFO logging off
  (``--log-level warning``), as ours runs without its access log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_ENGINE = ROOT / "tests" / "servers" / "fake_engine.py"
REALTIME = ROOT / "tests" / "servers" / "realtime.py"
OURS = ROOT / ".venv" / "bin" / "vllm-fleet"
VLLM_ROUTER_VENV = ROOT / ".venv" / "tools" / "vllm-router"
VLLM_ROUTER = VLLM_ROUTER_VENV / "bin" / "vllm-router"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin(pid: int, cores: set[int] | None) -> None:
    """Pin every thread of ``pid`` (sched_setaffinity on a pid moves only its main thread)."""
    if not cores:
        return
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), cores)


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(c) for c in file.read().split()]
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds (threads included)."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{member}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 counted from 1, with pid and comm
    return total / TICK


def core_busy_s(cores: set[int] | None) -> float:
    """Busy seconds (user, nice, system, irq, softirq, steal) of ``cores`` from /proc/stat: every process's."""
    if not cores:
        return 0.0
    total = 0
    with open("/proc/stat") as file:
        for line in file:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                total += user + nice + system + irq + softirq + steal
    return total / TICK


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def answers(url: str, model: str | None, timeout_s: float = 1.0) -> bool:
    """Does ``url`` answer: a 1-token completion from ``model``, or (no model: a server without completions,
    such as the WebSocket origin) a 200 from GET /health."""
    if model is None:
        request = urllib.request.Request(f"{url}/health")
    else:
        body = json.dumps({"model": model, "prompt": "ready?", "max_tokens": 1}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{url}/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


@dataclass
class Proc:
    """One started process: its name, URL, the Popen, and what to clean up."""

    name: str
    url: str
    proc: subprocess.Popen
    workdir: Path | None = None
    note: str = ""
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def wait_ready(self, timeout_s: float = 30.0, model: str | None = "yardstick") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if answers(self.url, model):
                return
            time.sleep(0.1)
        tail = self.log.read_text()[-2000:] if self.log and self.log.exists() else ""
        self.stop()
        raise RuntimeError(f"{self.name} did not answer at {self.url} (exit {self.proc.poll()}): {tail}")

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
                self.proc.wait(10)


def stop_all_on_sigterm() -> None:
    """A SIGTERM ends the run as Ctrl-C does, through its ``finally``: the processes it started run in sessions of
    their own (so a terminal's Ctrl-C reaches only the benchmark), and nothing else would stop them."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _start(name: str, argv: list[str], url: str, cores: set[int] | None, log: Path) -> Proc:
    """Start ``argv`` in its own process group under ``taskset -c CORES`` (pinned from its first instruction)."""
    taskset = shutil.which("taskset")
    if cores and taskset:
        argv = [taskset, "-c", ",".join(map(str, sorted(cores))), *argv]
    out = log.open("ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    out.close()
    if not taskset:
        pin(proc.pid, cores)
    return Proc(name, url, proc, log=log)


def yardstick(work: Path, cores: set[int] | None, *flags: str, name: str = "yardstick") -> Proc:
    """tests/servers/fake_engine.py (no flags: the zero-latency yardstick), answering once started."""
    port = free_port()
    argv = [sys.executable, str(FAKE_ENGINE), "--port", str(port), *flags]
    proc = _start(name, argv, f"http://127.0.0.1:{port}", cores, work / f"{name}-{port}.log")
    proc.wait_ready()
    return proc


def realtime(work: Path, cores: set[int] | None, model: str = "m") -> Proc:
    """tests/servers/realtime.py: a WebSocket echo on uvicorn + FastAPI (vLLM's server stack) at /v1/realtime."""
    port = free_port()
    argv = [sys.executable, str(REALTIME), "--port", str(port), "--models", model]
    proc = _start("realtime", argv, f"http://127.0.0.1:{port}", cores, work / f"realtime-{port}.log")
    proc.wait_ready(model=None)
    return proc


def ours(
    work: Path,
    backends: list[str],
    cores: set[int] | None,
    policy: str = "prefix",
    model: str | None = "yardstick",
    flags: tuple[str, ...] = (),
) -> Proc:
    port = free_port()
    argv = [str(OURS), "router", *(a for b in backends for a in ("--backend", b)), "--port", str(port)]
    argv += ["--policy", policy, "--no-access-log", *flags]
    proc = _start(f"ours ({policy})", argv, f"http://127.0.0.1:{port}", cores, work / f"ours-{port}.log")
    proc.wait_ready(60, model)
    return proc


def nginx_available() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def nginx(work: Path, backends: list[str], cores: set[int] | None, model: str | None = "yardstick") -> Proc:
    """nginx as a plain reverse proxy: one worker, keepalive pool to the backends, no buffering; WebSockets
    passed as nginx's docs configure them (nginx.org/en/docs/http/websocket.html), other requests with
    ``Connection: ""`` so the upstream connections are kept alive."""
    binary = nginx_available()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    workdir = work / f"nginx-{port}"
    workdir.mkdir(parents=True)
    servers = "".join(f"server {b.removeprefix('http://')};" for b in backends)
    (workdir / "nginx.conf").write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""} daemon off; worker_processes 1;
pid {workdir}/nginx.pid; error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 600s;
  client_max_body_size 64m; client_body_buffer_size 64k;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  upstream backends {{ {servers} keepalive 256; keepalive_requests 1000000; keepalive_timeout 600s; }}
  map $http_upgrade $upstream_connection {{ default upgrade; "" ""; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backends; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $upstream_connection;
      proxy_buffering off; proxy_read_timeout 600s; proxy_next_upstream error timeout http_502 http_503 http_504;
    }}
  }}
}}
"""
    )
    argv = [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
    proc = _start("nginx", argv, f"http://127.0.0.1:{port}", cores, workdir / "stdout.log")
    proc.workdir = workdir
    proc.log = workdir / "error.log"
    proc.wait_ready(model=model)
    pin_tree(proc, cores)
    return proc


def pin_tree(proc: Proc, cores: set[int] | None) -> None:
    """Pin every thread of the process and its children again (inherited from taskset; this makes sure)."""
    for member in tree(proc.pid):
        pin(member, cores)


def ensure_vllm_router() -> tuple[str | None, str]:
    """The vllm-router executable (installed into its own venv on first use), or None and why not."""
    if VLLM_ROUTER.exists():
        return str(VLLM_ROUTER), _version()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VLLM_ROUTER_VENV)], check=True, capture_output=True)
        pip = [str(VLLM_ROUTER_VENV / "bin" / "python"), "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
        done = subprocess.run([*pip, "vllm-router"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not make {VLLM_ROUTER_VENV}: {exc}"
    if done.returncode != 0 or not VLLM_ROUTER.exists():
        return None, f"pip install vllm-router failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return str(VLLM_ROUTER), _version()


def _version() -> str:
    python = VLLM_ROUTER_VENV / "bin" / "python"
    code = "import importlib.metadata as m; print(m.version('vllm-router'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "unknown version"


def vllm_router(
    work: Path, binary: str, backends: list[str], cores: set[int] | None, policy: str, model: str | None = "yardstick"
) -> Proc:
    """vllm-router --worker-urls ... --policy round_robin|cache_aware (logging at warning)."""
    port, metrics = free_port(), free_port()
    argv = [binary, "--worker-urls", *backends, "--host", "127.0.0.1", "--port", str(port), "--policy", policy]
    argv += ["--prometheus-port", str(metrics), "--log-level", "warning"]
    proc = _start(f"vllm-router ({policy})", argv, f"http://127.0.0.1:{port}", cores, work / f"vr-{port}.log")
    proc.wait_ready(60, model)
    return proc
