"""Serves a data root over HTTP on the loopback interface, as an object store
would (tests and the streaming benchmark; ``python -m data_pipelines.serve DIR``).

    with serve_root("runs/data/demo") as url:   # "http://127.0.0.1:PORT"
        StreamingLoader(LoaderConfig(root=url, ...))
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve_root(root: str | Path, port: int = 0) -> Iterator[str]:
    """A thread serving ``root``'s files on 127.0.0.1 (a free port by default);
    yields the root's URL and stops the server on exit."""
    handler = functools.partial(_QuietHandler, directory=str(Path(root).resolve()))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.serve", description=__doc__)
    p.add_argument("root", help="a converted data root (the folder with manifest.json)")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    if not (Path(args.root) / "manifest.json").is_file():
        p.error(f"{args.root} has no manifest.json: not a converted data root")
    with serve_root(args.root, args.port) as url:
        print(f"serving {args.root} at {url} (data.root={url}); Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
