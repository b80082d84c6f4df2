"""`python -m edge_container serve [--model-dir DIR] [--host H] [--port P] ...` (the container's entry point).

Flags override the matching EDGE_* variables and go through the same validation.

    python -m edge_container feedback export --store FILE [--out FILE] [--after-id N]

writes the feedback store (EDGE_FEEDBACK_PATH) as JSON Lines for `model_build build --feedback`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from modelpack.version import version_line

_FLAGS = {"model_dir": "EDGE_MODEL_DIR", "host": "EDGE_HOST", "port": "EDGE_PORT", "policy": "EDGE_POLICY",
          "workers": "EDGE_WORKERS", "processes": "EDGE_PROCESSES", "cloud_url": "EDGE_CLOUD_URL",
          "log_level": "EDGE_LOG_LEVEL"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "feedback":
        return _export_feedback(args)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge_container", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line("edge_container"))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API (uvicorn)")
    for name, env in _FLAGS.items():
        serve.add_argument("--" + name.replace("_", "-"), dest=name, help=f"overrides {env}")
    feedback = sub.add_parser("feedback", help="the feedback store").add_subparsers(dest="action", required=True)
    export = feedback.add_parser("export", help="write the store as JSON Lines (model_build build --feedback)")
    export.add_argument("--store", required=True, help="the store file (EDGE_FEEDBACK_PATH)")
    export.add_argument("--out", help="output file (default: stdout)")
    export.add_argument("--after-id", type=int, default=0, help="only records after this id (incremental)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:  # the package installed without its edge extra
        print(f"error: {exc.name} is missing: the edge needs its dependencies "
              "(pip install 'edge-cloud-inference[edge]', or -r edge_container/requirements.txt)", file=sys.stderr)
        return 2

    from edge_container import logs
    from edge_container.app import create_app
    from edge_container.errors import ConfigurationError
    from edge_container.settings import Settings

    environ = dict(os.environ)
    environ.update({env: str(value) for name, env in _FLAGS.items() if (value := getattr(args, name)) is not None})
    try:
        settings = Settings.from_env(environ)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if settings.processes > 1 and not settings.is_child:
        from edge_container.processes import Supervisor

        return Supervisor(environ, host=settings.host, port=settings.port, processes=settings.processes).run()
    from edge_container.http_limits import ConnectionGate, check_open_files
    from edge_container.wiring import EdgeStack

    stack = EdgeStack.create(settings)
    gate = ConnectionGate.for_listener(settings, stack.metrics, "api")  # slow, oversized, numerous clients
    check_open_files(settings.max_connections)
    config = uvicorn.Config(create_app(settings, stack=stack), host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=settings.access_log, lifespan="on",
                            log_config=logs.uvicorn_log_config(settings.log_format),
                            timeout_graceful_shutdown=10, timeout_keep_alive=settings.keep_alive_s,
                            **gate.uvicorn_options())
    server = uvicorn.Server(config)
    sockets = None
    if settings.is_child:  # one of EDGE_PROCESSES: the shared port, and a loopback port of its own
        from edge_container.processes import child_sockets

        assert settings.process_index is not None and settings.peers_dir is not None
        sockets = child_sockets(settings.host, settings.port, settings.process_index, settings.peers_dir)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # uvicorn's own status for a failed lifespan start-up (3): ours is 1
        if exc.code != uvicorn.config.STARTUP_FAILURE:
            raise
        return 1
    # A lifespan start-up failure (e.g. a refused artifact) is status 1, however uvicorn ends it.
    return 0 if server.started else 1


def _export_feedback(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_container.feedback import FeedbackError, FeedbackStore

    if not Path(args.store).is_file():
        print(f"error: {args.store}: no such feedback store", file=sys.stderr)
        return 2
    try:
        with FeedbackStore.open_existing(args.store) as store:
            if args.out is None:
                last = store.export(sys.stdout, after_id=args.after_id)
            else:
                with open(args.out, "w", encoding="utf-8") as out:
                    last = store.export(out, after_id=args.after_id)
    except (FeedbackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported records up to id {last}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
