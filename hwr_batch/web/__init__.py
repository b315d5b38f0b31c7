"""``hwr-batch serve``: the web app (FastAPI under uvicorn; install the ``[web]`` extra).

Only this package imports fastapi and uvicorn, so the reader and the batch run without them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hwr_batch import defaults
from hwr_batch.errors import ExitCode

__all__ = ["serve_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwr-batch serve",
        description="Serve the drawing page, the scan checker and the JSON API (docs at /docs).",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, "
        "this machine only; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.WEB_MAX_UPLOAD_MB,
        help="largest upload accepted, in MB (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.WEB_MAX_PIXELS,
        help="largest page accepted, in pixels (default: %(default)s)",
    )
    p.add_argument(
        "--dpi",
        type=int,
        default=defaults.PDF_DPI,
        help="resolution PDF pages are rendered at (default: %(default)s)",
    )
    for charset in defaults.CHARSETS:
        p.add_argument(
            f"--{charset}-model",
            metavar="PATH",
            default=None,
            help=f"an .onnx file to use for '{charset}' instead of the bundled one",
        )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return p


def serve_main(argv: list[str]) -> int:
    """Run the web app until interrupted; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or not 0 < args.port < 65536:
        print("hwr-batch serve: limits must be positive and the port in 1..65535", file=sys.stderr)
        return int(ExitCode.bad_arguments)
    try:
        import uvicorn

        from hwr_batch.web.app import WebSettings, create_app
    except ImportError as exc:
        print(
            f"hwr-batch serve: the web app needs the [web] extra "
            f"(pip install 'hwr-batch[web]'): {exc}",
            file=sys.stderr,
        )
        return int(ExitCode.bad_arguments)
    models = {c: getattr(args, f"{c}_model") or c for c in defaults.CHARSETS}
    settings = WebSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        dpi=args.dpi,
        models=models,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
