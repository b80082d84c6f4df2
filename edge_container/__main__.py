"""`python -m edge_container serve [--model-dir DIR] [--host H] [--port P] ...` (the container's entry point).

Flags override the matching EDGE_* variables and go through the same validation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

_FLAGS = {"model_dir": "EDGE_MODEL_DIR", "host": "EDGE_HOST", "port": "EDGE_PORT", "policy": "EDGE_POLICY",
          "workers": "EDGE_WORKERS", "cloud_url": "EDGE_CLOUD_URL", "log_level": "EDGE_LOG_LEVEL"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_container", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API (uvicorn)")
    for name, env in _FLAGS.items():
        serve.add_argument("--" + name.replace("_", "-"), dest=name, help=f"overrides {env}")
    args = parser.parse_args(argv)

    import uvicorn

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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.access_log, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    server.run()
    # uvicorn exits quietly when the lifespan start-up fails (e.g. a refused artifact): say so in the status.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
