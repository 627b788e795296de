"""`dtb serve`: the question-answering HTTP server on uvicorn."""
from __future__ import annotations

import argparse
import os
import sys


WORKER_HEALTHCHECK_TIMEOUT_S = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    from dtb_ext.help_format import HelpFormatter
    from dtb_ext.precision import PRECISION_CHOICES
    from dtb_ext.graph_export.runtimes import RUNTIMES
    from dtb_ext.serve.settings import ServeSettings

    defaults = ServeSettings()
    serve = subparsers.add_parser(
        "serve",
        help="serve question answering over HTTP, each request under its own budget",
        description="An HTTP server (Starlette on uvicorn) for a span-QA model and its front. POST /answer takes "
        'JSON {"question", "context"} plus at most one of max_f1_drop_percent, min_speedup, latency_budget_ms '
        "(none: full length) and returns {answer, start_char, end_char, score, length_config, ms, degraded}; "
        "GET /health, GET /metrics (Prometheus). Concurrent requests are batched dynamically, mixed budgets in "
        "shared forward passes, on one model thread per process. Stop with Ctrl-C or SIGTERM: admitted requests "
        "are answered first.",
        formatter_class=HelpFormatter,
    )
    serve.add_argument("--model", default=None, help="QA model directory (default: the bundled dtb_ext/default_model)")
    serve.add_argument("--front", default=None,
                       help="front JSON written by `dtb search` (default: the model directory's front.json; "
                       "without one only full length is served)")
    serve.add_argument("--host", default=defaults.host, help="address to listen on")
    serve.add_argument("--port", type=int, default=defaults.port, help="port to listen on")
    serve.add_argument("--precision", choices=PRECISION_CHOICES, default=defaults.precision,
                       help="model precision; auto: bf16 where the machine runs it natively, else fp32")
    serve.add_argument("--runtime", choices=RUNTIMES, default=defaults.runtime,
                       help="where the model runs: torch (dtb_ext's kernels), or its exported graph in openvino or "
                       "onnxruntime (one graph for every budget; needs the openvino extra)")
    serve.add_argument("--slo-ms", type=float, default=None,
                       help="p99 latency objective in ms: when queueing would break it, requests whose budget "
                       "allows it move to faster configurations of the front, and past what the fastest allowed "
                       "one can hold the server answers 503 (default: off)")
    serve.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                       help="requests per batch, and windows per forward pass")
    serve.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                       help="batching linger: 0 runs a batch as soon as the model thread is free, with every "
                       "request queued up to --max-batch-size (an idle server answers at once; requests that arrive "
                       "during a batch share the next); > 0 makes each batch wait up to this long after its first "
                       "request for more, even when nothing else is coming")
    serve.add_argument("--max-context-chars", type=int, default=defaults.max_context_chars,
                       help="longer contexts are refused (422)")
    serve.add_argument("--max-queue", type=int, default=defaults.max_queue,
                       help="admitted, unanswered requests at most; past it the server answers 503")
    serve.add_argument("--workers", type=int, default=defaults.workers,
                       help="uvicorn worker processes, each with its own copy of the model (set OMP_NUM_THREADS "
                       "to the cores per worker)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--unpatched", action="store_true",
                       help="serve the Hugging Face model as loaded, full length only: the baseline to compare with")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dtb_ext.serve.app import answerer_for, create_app
    from dtb_ext.serve.settings import SETTINGS_ENVIRONMENT_VARIABLE, ServeSettings

    try:
        settings = ServeSettings(
            model_dir=args.model, front=args.front, host=args.host, port=args.port, precision=args.precision,
            slo_ms=args.slo_ms, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            max_context_chars=args.max_context_chars, max_queue=args.max_queue, workers=args.workers,
            access_log=args.access_log, unpatched=args.unpatched, runtime=args.runtime,
        )
        if settings.workers > 1:
            os.environ[SETTINGS_ENVIRONMENT_VARIABLE] = settings.to_json()
            # A worker answers the supervisor's health pings only once its interpreter is up; loading torch and
            # the model on a busy host can take longer than uvicorn's default 5 s, which would restart it forever.
            uvicorn.run("dtb_ext.serve.app:app_from_environment", factory=True, host=settings.host,
                        port=settings.port, workers=settings.workers, access_log=settings.access_log,
                        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S)
            return 0
        # One process: load before the port opens, so that a bad model or front fails here with its message.
        answerer = answerer_for(settings)
    except ValueError as error:
        print(f"dtb serve: error: {error}", file=sys.stderr)
        return 2
    config = uvicorn.Config(create_app(settings, answerer), host=settings.host, port=settings.port,
                            access_log=settings.access_log)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3
