"""``threedgen app``: a local web app for artists (prompt → recipe → progress → 3D preview → files).

Importing this package imports neither Gradio nor torch; ``main`` does, when the app starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="threedgen app", description="Start the threedgen web app on this machine.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--outputs", default="outputs/app", help="folder for the app's runs (one sub-folder per run)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides added to every run (e.g. trainer.val_every=50)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"error: --port must be in [1, 65535], got {args.port}", file=sys.stderr)
        return 2
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: overrides are key=value, got {bad[0]!r}", file=sys.stderr)
        return 2
    out = Path(args.outputs).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the outputs folder {str(out)!r}: {e.strerror}; pass --outputs a folder you can write", file=sys.stderr)
        return 2

    from .jobs import RunQueue
    from .ui import build

    demo = build(RunQueue(out, extra_args=tuple(args.overrides)))
    print(f"threedgen app: http://{args.host}:{args.port} (runs in {out})", flush=True)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out)],
                                                   show_error=True, inbrowser=False, share=False)
    return 0
