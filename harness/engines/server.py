"""``vllm-server``: vLLM in its own process behind a small HTTP API, and the engine that talks to it.

The server (``harness serve`` or ``python -m harness.engines.server``) hosts one in-process vLLM
(:class:`harness.engines.vllm_local.VLLMRunner`) and answers, as JSON over HTTP on 127.0.0.1:

* ``GET /health`` - 200 ``{"status": "ready", "version": ...}``; 503 while starting; 500 after a failed start.
* ``POST /generate`` - prompt token ids + sampling settings -> token ids, behaviour log-probs, finish reasons
  and the policy version that produced them.
* ``POST /weights?version=V&final=0|1`` - a safetensors blob of checkpoint-format weights (large models in
  several chunks; the last has ``final=1``), loaded in place; then the prefix cache is dropped.
* ``POST /probe`` - prompt log-probs of a token sequence (the weight-sync check).
* ``POST /shutdown``.

Authentication: with ``HARNESS_SERVE_TOKEN`` set in the server's environment, every ``POST`` (generate, weights,
probe, shutdown) needs the header ``Authorization: Bearer <token>`` (compared in constant time); others get 401,
their body dropped unread and the connection closed. ``GET /health`` stays open (status, version, model name and
pid only; a client polls it while the server starts). The engine sends ``$HARNESS_SERVE_TOKEN`` when it attaches to
``server_url``; a server it starts itself always gets a fresh random token (through the environment, never the
command line), so no other process on the machine can push weights to it or stop it.

The engine either starts a server as a child process (from the trainer's config and tokenizer, dummy
weights, then the trainer's weights are pushed) or attaches to ``server_url``. Start-up, health, every
request and every weight push have timeouts; a dead or unreachable server raises
:class:`~harness.engines.checks.EngineError` naming the URL, the exit code and the log tail - never a hang.
Without a token the API has no authentication: keep such a server on loopback (the default) or a private network.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import hmac
import http.client
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from harness.engines import vllm_local
from harness.engines.checks import EngineError, SyncCheckedEngine
from harness.engines.options import EngineOptions
from harness.io import atomic_write_text
from harness.models import get_spec, resolve_path
from harness.rollout import Completion, SamplingParams

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 << 20  # weight push chunk size
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "HARNESS_SERVE_TOKEN"  # shared secret: the server requires it on every POST, the client sends it


def _env_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


# =============================================================================================
# server


class _ServerState:
    def __init__(self):
        self.runner = None
        self.status = "starting"
        self.error = ""
        self.version = 0
        self.lock = threading.Lock()  # one vLLM call at a time
        self.pending: list[bytes] = []  # weight chunks of the update in progress
        self.info: dict = {}
        self.stop = threading.Event()  # set by /shutdown and SIGTERM


class _Handler(BaseHTTPRequestHandler):
    """The server's HTTP layer; :func:`_make_handler` binds it to a :class:`_ServerState` and a token."""

    protocol_version = "HTTP/1.1"
    state: _ServerState
    expected: bytes | None = None  # b"Bearer <token>" required on every POST; None = no authentication

    def log_message(self, fmt, *args):  # quiet: one line per request would flood the log
        logger.debug("%s - %s", self.address_string(), fmt % args)

    def _reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        buf = io.BytesIO()
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 24))
            if not chunk:
                raise ConnectionError("client closed the connection mid-request")
            buf.write(chunk)
            n -= len(chunk)
        return buf.getvalue()

    def do_GET(self):  # noqa: N802
        state = self.state
        path = urllib.parse.urlparse(self.path).path
        if path != "/health":
            return self._reply(404, {"error": f"no such endpoint {path}"})
        code = {"ready": 200, "starting": 503}.get(state.status, 500)
        payload = {
            "status": state.status,
            "error": state.error,
            "version": state.version,
            "pid": os.getpid(),
            **state.info,
        }
        return self._reply(code, payload)

    def _authorized(self) -> bool:
        if self.expected is None:
            return True
        return hmac.compare_digest(self.headers.get("Authorization", "").encode(), self.expected)

    def _refuse(self, path: str) -> None:
        """401 for a missing or wrong token; the body is drained unread and the connection closed."""
        logger.warning("refused %s from %s: missing or wrong token", path, self.address_string())
        self.close_connection = True
        with contextlib.suppress(
            Exception
        ):  # drain (and drop) the body, so the client reads the 401 instead of a reset
            n = int(self.headers.get("Content-Length") or 0)
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 20))
                if not chunk:
                    break
                n -= len(chunk)
        body = json.dumps({"error": f"missing or wrong token: set {TOKEN_ENV} to the server's token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        state = self.state
        url = urllib.parse.urlparse(self.path)
        if not self._authorized():
            return self._refuse(url.path)
        try:
            body = self._body()
            if url.path == "/shutdown":
                state.stop.set()  # before the reply: a client that got 200 may rely on the stop being under way
                self._reply(200, {"status": "shutting down"})
                return
            if state.status != "ready":
                return self._reply(503, {"error": f"server is {state.status}: {state.error}"})
            if url.path == "/generate":
                return self._generate(body)
            if url.path == "/weights":
                return self._weights(url.query, body)
            if url.path == "/probe":
                return self._probe(body)
            return self._reply(404, {"error": f"no such endpoint {url.path}"})
        except Exception as exc:  # report, keep serving
            logger.error("request %s failed: %s", url.path, traceback.format_exc())
            with contextlib.suppress(Exception):
                self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _generate(self, body: bytes) -> None:
        state = self.state
        req = json.loads(body)
        p = SamplingParams(**req["params"])
        with state.lock:
            groups = state.runner.generate(req["prompts"], p, req["eos_ids"], int(req["seed"]))
            version = state.version
        completions = [
            [
                {
                    "token_ids": c["token_ids"].tolist(),
                    "finish_reason": c["finish_reason"],
                    "logprobs": None if c["logprobs"] is None else c["logprobs"].tolist(),
                }
                for c in g
            ]
            for g in groups
        ]
        return self._reply(200, {"version": version, "completions": completions})

    def _weights(self, query: str, body: bytes) -> None:
        state = self.state
        q = urllib.parse.parse_qs(query)
        final = q.get("final", ["1"])[0] == "1"
        with state.lock:
            if q.get("first", ["0"])[0] == "1":
                state.pending = []
            state.pending.append(body)
            if not final:
                return self._reply(200, {"status": "chunk received", "chunks": len(state.pending)})
            from safetensors.torch import load as st_load

            weights = [kv for blob in state.pending for kv in st_load(blob).items()]
            state.pending = []
            dt = state.runner.load_weights(weights)
            state.version = int(q.get("version", [state.version])[0])
        return self._reply(200, {"version": state.version, "load_s": dt, "tensors": len(weights)})

    def _probe(self, body: bytes) -> None:
        state = self.state
        req = json.loads(body)
        with state.lock:
            lp = state.runner.probe_logprobs(req["probe"])
        return self._reply(200, {"logprobs": lp.tolist(), "version": state.version})


def _make_handler(state: _ServerState, token: str | None = None) -> type[_Handler]:
    """The request handler class of a server with ``state``; ``token`` (None = none) is required on every POST."""
    expected = f"Bearer {token}".encode() if token else None
    return type("Handler", (_Handler,), {"state": state, "expected": expected})


def _watch_parent(parent_pid: int, state: _ServerState) -> None:
    """Exit when the process that started us is gone (no orphaned servers after a crashed trainer)."""
    while True:
        time.sleep(2.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            logger.error("parent process %d is gone; shutting down", parent_pid)
            os._exit(3)
        except PermissionError:
            pass


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    port_file: str | None = None,
    dtype: str | None = None,
    max_model_len: int | None = None,
    load_format: str = "auto",
    options: EngineOptions | None = None,
    parent_pid: int | None = None,
    token: str | None = None,
) -> int:
    """Run the server until /shutdown, SIGTERM or SIGINT. Binds first, answers /health while vLLM starts.

    ``token``: required on every POST (default ``$HARNESS_SERVE_TOKEN``; none = no authentication)."""
    options = options or EngineOptions()
    token = token or _env_token()
    if host not in LOOPBACK and not token:
        logger.warning(
            "serving on %s without a token: anyone who reaches it can push weights or stop it; set %s", host, TOKEN_ENV
        )
    state = _ServerState()
    httpd = ThreadingHTTPServer((host, port), _make_handler(state, token))
    httpd.daemon_threads = True
    bound = httpd.server_address[1]
    if port_file:
        atomic_write_text(port_file, str(bound))  # the parent polls this file: it must never see it half-written
    print(
        f"harness serve: listening on http://{host}:{bound} (loading {model}; "
        + (f"token required from {TOKEN_ENV}" if token else "no token")
        + ")",
        flush=True,
    )
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid, state), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: state.stop.set())
    try:
        vllm_local.prepare_vllm_env()
        path = _resolve_model_path(model)
        dtype = dtype or _config_dtype(path)
        state.runner = vllm_local.VLLMRunner(
            path, dtype=dtype, max_model_len=max_model_len, options=options, load_format=load_format, colocated=False
        )
        state.info = {
            "model": model,
            "dtype": dtype,
            "startup_s": round(state.runner.startup_s, 2),
            "load_format": load_format,
        }
        state.status = "ready"
        print(f"harness serve: ready in {state.runner.startup_s:.1f}s on http://{host}:{bound}", flush=True)
    except BaseException as exc:
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        logger.error("start-up failed: %s", traceback.format_exc())
        print(f"harness serve: start-up failed: {state.error}", flush=True)
        time.sleep(1.0)  # let a waiting client read the failure from /health
        httpd.shutdown()
        return 1
    try:
        while not state.stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            httpd.shutdown()
        with contextlib.suppress(Exception):
            state.runner.close()
    print("harness serve: stopped", flush=True)
    return 0


def _resolve_model_path(model: str) -> str:
    if Path(model).exists():
        return str(model)
    return resolve_path(get_spec(model))


def _config_dtype(path: str) -> str:
    with contextlib.suppress(Exception):
        cfg = json.loads((Path(path) / "config.json").read_text())
        d = cfg.get("dtype") or cfg.get("torch_dtype")
        if d in ("float32", "bfloat16", "float16"):
            return d
    return "bfloat16" if torch.cuda.is_available() else "float32"


def add_serve_parser(sub) -> argparse.ArgumentParser:
    """``harness serve``: add to the CLI's subparsers; dispatch to :func:`cmd_serve`."""
    p = sub.add_parser(
        "serve",
        help="Run a vLLM rollout server for --engine vllm-server (attach with generation.server_url).",
        description="Serve a model with vLLM for the vllm-server engine. "
        "Weights are pushed by the trainer after every step.",
    )
    p.add_argument(
        "--model",
        default="tiny",
        help="Registry name or local path (default: tiny). The trainer pushes its weights on attach.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"Bind address (default 127.0.0.1). Set {TOKEN_ENV} to require a shared token on every POST.",
    )
    p.add_argument("--port", type=int, default=8765, help="Port (0 = any free port; see --port-file). Default 8765.")
    p.add_argument("--port-file", help="Write the bound port to this file once listening.")
    p.add_argument("--dtype", help="Engine dtype (default: the model config's; bfloat16 on GPU when unknown).")
    p.add_argument(
        "--max-model-len", type=int, help="Longest prompt + completion (default: the model's context window)."
    )
    p.add_argument("--kv-cache-gb", type=float, help="KV-cache size in GiB (default: from --gpu-memory-utilization).")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="vLLM memory fraction (of host RAM on CPU; default 0.2 there, 0.85 on GPU).",
    )
    p.add_argument(
        "--enforce-eager",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="Disable torch.compile/CUDA graphs (default: on CPU only).",
    )
    p.add_argument(
        "--load-format",
        default="auto",
        help="vLLM load format (dummy = random weights, for a trainer that pushes its own).",
    )
    p.add_argument("--seed", type=int, default=0, help="Engine seed (requests carry their own seeds).")
    p.add_argument(
        "--max-num-seqs",
        type=int,
        help="Most sequences generated at once; sizes the default CPU KV cache (default 256).",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="CPU only: torch threads while generating (default 1, vLLM's recommendation; 0 = leave).",
    )
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="Log every request.")
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    opts = EngineOptions(
        kv_cache_gb=args.kv_cache_gb,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        cpu_threads=args.cpu_threads or None,
        max_num_seqs=args.max_num_seqs,
    )
    return serve(
        args.model,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        load_format=args.load_format,
        options=opts,
        parent_pid=args.parent_pid,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.engines.server")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    return cmd_serve(args)


# =============================================================================================
# client engine


class _Client:
    def __init__(self, url: str, describe, token: str | None = None):
        self.url = url.rstrip("/")
        self.describe = describe  # () -> str with process/log details for error messages
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        timeout: float,
        content_type: str = "application/json",
    ) -> dict:
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = ""
            with contextlib.suppress(Exception):
                detail = json.loads(exc.read()).get("error", "")
            raise EngineError(
                f"vllm-server {self.url}{path} answered HTTP {exc.code}: {detail}{self.describe()}"
            ) from None
        except (TimeoutError, socket.timeout) as exc:
            raise EngineError(
                f"vllm-server {self.url}{path} did not answer within {timeout:.0f}s ({exc}){self.describe()}"
            ) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(
                f"vllm-server {self.url} is unreachable ({type(reason).__name__}: {reason}); "
                f"it has stopped or crashed{self.describe()}"
            ) from None


class VLLMServerEngine(SyncCheckedEngine):
    """Rollouts from a vLLM server process; the trainer's weights are pushed after every optimizer step."""

    name = "vllm-server"
    cheap_logprobs = True  # vLLM computes the sampled token's log-prob with the sample

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 256, **options):
        self.options = EngineOptions.from_kwargs(**options)
        if self.options.sleep_between_phases:
            raise ValueError("sleep_between_phases applies to the colocated vllm engine only")
        self.proc: subprocess.Popen | None = None
        self._dir: str | None = None
        self._log_path: str | None = None
        self._closed = False
        self._init_sync_check(model, tokenizer, batch_size)
        # attached: the server's token from the environment; started here: that one, or a fresh random one
        self.token = _env_token() if self.options.server_url else (_env_token() or secrets.token_urlsafe(32))
        t0 = time.perf_counter()
        try:
            if self.options.server_url:
                self.url = self.options.server_url.rstrip("/")
                self.client = _Client(self.url, self._describe, self.token)
                self._wait_healthy(self.options.server_startup_timeout_s)
            else:
                self._spawn(model, tokenizer)
            self.startup_s = time.perf_counter() - t0
            self.sync_weights(model, 0)
        except BaseException:
            self.close()
            raise

    # -- process management -------------------------------------------------------------------
    def _spawn(self, model: torch.nn.Module, tokenizer) -> None:
        why = vllm_local.cpu_incompatibility(model.config)
        if why:
            raise EngineError(f"engine 'vllm-server': {why}; use --engine hf")
        self._dir = tempfile.mkdtemp(prefix="harness-vllm-server-")
        vllm_local.write_model_skeleton(model, tokenizer, self._dir)
        port_file = os.path.join(self._dir, "port")
        self._log_path = self.options.server_log or os.path.join(self._dir, "server.log")
        o = self.options
        cmd = [
            sys.executable,
            "-m",
            "harness.engines.server",
            "--model",
            self._dir,
            "--load-format",
            "dummy",
            "--port",
            "0",
            "--port-file",
            port_file,
            "--dtype",
            self.engine_dtype,
            "--seed",
            str(o.seed),
            "--parent-pid",
            str(os.getpid()),
            "--cpu-threads",
            str(o.cpu_threads or 0),
        ]
        mml = vllm_local.capped_max_model_len(o.max_model_len, model)
        if mml:
            cmd += ["--max-model-len", str(mml)]
        if o.kv_cache_gb:
            cmd += ["--kv-cache-gb", str(o.kv_cache_gb)]
        if o.max_num_seqs:
            cmd += ["--max-num-seqs", str(o.max_num_seqs)]
        if o.gpu_memory_utilization:
            cmd += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
        if o.enforce_eager is not None:
            cmd += ["--enforce-eager" if o.enforce_eager else "--no-enforce-eager"]
        log = open(self._log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: self.token},
            )
        finally:
            log.close()
        atexit.register(self.close)
        deadline = time.monotonic() + o.server_startup_timeout_s
        self.url = None
        self.client = _Client("http://127.0.0.1:0", self._describe, self.token)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(
                    f"vllm-server exited with code {self.proc.returncode} during start-up{self._describe()}"
                )
            if os.path.exists(port_file):
                self.url = f"http://127.0.0.1:{int(Path(port_file).read_text())}"
                self.client = _Client(self.url, self._describe, self.token)
                break
            time.sleep(0.2)
        if self.url is None:
            raise EngineError(
                f"vllm-server did not open its port within {o.server_startup_timeout_s:.0f}s{self._describe()}"
            )
        self._wait_healthy(max(deadline - time.monotonic(), 1.0))

    def _wait_healthy(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(
                    f"vllm-server exited with code {self.proc.returncode} during start-up{self._describe()}"
                )
            try:
                h = self._health(timeout=min(10.0, max(timeout, 1.0)))
                if h.get("status") == "ready":
                    return h
                if h.get("status") == "failed":
                    raise EngineError(f"vllm-server at {self.url} failed to start: {h.get('error')}{self._describe()}")
                last = h.get("status", "")
            except EngineError as exc:
                if "failed to start" in str(exc):
                    raise
                last = str(exc).split(";")[0]
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"vllm-server at {self.url} not healthy within {timeout:.0f}s (last: {last}){self._describe()}"
                )
            time.sleep(0.5)

    def _health(self, timeout: float) -> dict:
        req = urllib.request.Request(self.url + "/health")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 starting / 500 failed carry a JSON status
            try:
                return json.loads(exc.read())
            except Exception:
                raise EngineError(f"vllm-server {self.url}/health answered HTTP {exc.code}") from None
        except (
            TimeoutError,
            socket.timeout,
            urllib.error.URLError,
            ConnectionError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            raise EngineError(f"vllm-server {self.url} is unreachable ({getattr(exc, 'reason', exc)})") from None

    def health(self) -> dict:
        """Current /health answer (raises EngineError when the server is gone)."""
        return self._health(timeout=max(self.options.server_sync_timeout_s / 10, 5.0))

    def _describe(self) -> str:
        parts = []
        if self.proc is not None:
            rc = self.proc.poll()
            parts.append(
                f"server pid {self.proc.pid} " + (f"exited with code {rc}" if rc is not None else "still running")
            )
        if self._log_path and os.path.exists(self._log_path):
            with contextlib.suppress(Exception):
                tail = Path(self._log_path).read_text(errors="replace").strip().splitlines()[-15:]
                parts.append(f"log {self._log_path}, last lines:\n    " + "\n    ".join(tail))
        return ("; " + "; ".join(parts)) if parts else ""

    # -- engine interface ---------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        out: list[list[Completion]] = []
        for s in range(0, len(prompts), max(self.batch_size, 1)):
            chunk = [list(map(int, p)) for p in prompts[s : s + self.batch_size]]
            body = json.dumps(
                {
                    "prompts": chunk,
                    "params": dataclasses.asdict(params),
                    "eos_ids": self.eos_ids,
                    "seed": (seed + 104729 * s) % (2**31 - 1),
                }
            ).encode()
            res = self.client.call("POST", "/generate", body=body, timeout=self.options.server_request_timeout_s)
            version = int(res["version"])
            for g in res["completions"]:
                out.append(
                    [
                        Completion(
                            token_ids=np.asarray(c["token_ids"], dtype=np.int64),
                            finish_reason=c["finish_reason"],
                            logprobs=None if c["logprobs"] is None else np.asarray(c["logprobs"], dtype=np.float32),
                            policy_version=version,
                        )
                        for c in g
                    ]
                )
        return out

    def sync_weights(self, model: torch.nn.Module, version: int) -> None:
        from safetensors.torch import save as st_save

        t0 = time.perf_counter()
        dtype = getattr(torch, self.engine_dtype)
        chunks: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        seen: set[int] = set()
        for name, t in vllm_local.named_weights(model, dtype):
            t = t.to("cpu").contiguous()
            if t.data_ptr() in seen:  # tied weights: safetensors refuses shared storage, send a copy
                t = t.clone()
            seen.add(t.data_ptr())
            if size and size + t.numel() * t.element_size() > CHUNK_BYTES:
                chunks.append({})
                size = 0
            chunks[-1][name] = t
            size += t.numel() * t.element_size()
        sent = 0
        res = {}
        for i, chunk in enumerate(chunks):
            blob = st_save(chunk)
            sent += len(blob)
            q = urllib.parse.urlencode({"version": version, "first": int(i == 0), "final": int(i == len(chunks) - 1)})
            res = self.client.call(
                "POST",
                f"/weights?{q}",
                body=blob,
                timeout=self.options.server_sync_timeout_s,
                content_type="application/octet-stream",
            )
        if int(res.get("version", -1)) != version:
            raise EngineError(
                f"vllm-server {self.url} reports policy version {res.get('version')} after pushing version {version}"
            )
        self.version = version
        metrics = {
            "engine/sync_s": time.perf_counter() - t0,
            "engine/sync_bytes": float(sent),
            "engine/sync_load_s": float(res.get("load_s", 0.0)),
        }
        self._finish_sync(model, version, metrics, t0)

    def _probe_engine(self) -> np.ndarray:
        res = self.client.call(
            "POST",
            "/probe",
            body=json.dumps({"probe": self.probe}).encode(),
            timeout=self.options.server_sync_timeout_s,
        )
        return np.asarray(res["logprobs"], dtype=np.float64)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                _Client(self.url, lambda: "", self.token).call("POST", "/shutdown", body=b"{}", timeout=5.0)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # our own child's session (start_new_session=True)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        if self._dir and not self.options.server_log:
            shutil.rmtree(self._dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
