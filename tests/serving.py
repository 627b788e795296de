"""Helpers of the server tests and the serving benchmark: a tiny QA model with a front, `dtb serve` in a
subprocess or in this process on a free loopback port, and bounded waiting."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import httpx

from dtb_ext.macs import count_macs
from dtb_ext.search.front import Front
from tiny_qa import save_tiny_qa_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny model's front: full length and three cheaper configurations, F1 falling with cost.
TINY_FRONT_CONFIGS = {(384, 384): 60.0, (200, 120): 58.0, (120, 60): 55.0, (40, 20): 40.0}
FULL = (384, 384)


def tiny_front(config: Any) -> Front:
    """A front over TINY_FRONT_CONFIGS with the model's MACs at 384 tokens (made-up F1 values)."""
    results = [
        (lengths, {"f1": f1, "exact_match": f1 - 10, "macs": count_macs(config, list(lengths), 384).total,
                   "latency_ms": None})
        for lengths, f1 in TINY_FRONT_CONFIGS.items()
    ]
    return Front.build("macs", results, FULL)


def save_tiny_model_with_front(directory: str) -> str:
    """The tiny QA model (seed 0), its tokenizer and `front.json` in `directory`; returns it."""
    from transformers import AutoConfig

    save_tiny_qa_model(directory)
    with open(os.path.join(directory, "front.json"), "w") as handle:
        json.dump(tiny_front(AutoConfig.from_pretrained(directory)).to_json(), handle)
    return directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class ServerProcess:
    """`dtb serve ARGS` on a free loopback port with `threads` torch threads (OMP_NUM_THREADS); its output goes to
    `log_path`. Use as a context manager: it waits for /health, and stops the server (SIGTERM) on exit."""

    def __init__(self, args: list[str], log_path: str, start_timeout_s: float = 300.0, threads: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.threads = threads
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        environment = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dtb_ext.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 *self.args],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        if not wait_until(lambda: self.process.poll() is not None or _healthy(self.url), self.start_timeout_s, 0.2) \
                or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"dtb serve did not become healthy; its log:\n{self.log()}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout_s`); returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")


class InProcessServer:
    """A Starlette app on uvicorn in a thread of this process (to reach into its state in a test)."""

    def __init__(self, app: Any, start_timeout_s: float = 60.0) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.start_timeout_s = start_timeout_s

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        if not wait_until(lambda: self.server.started or not self.thread.is_alive(), self.start_timeout_s):
            raise RuntimeError("the in-process server did not start")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.server.should_exit = True
        self.thread.join(60)
