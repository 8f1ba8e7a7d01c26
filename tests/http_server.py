"""A real loopback HTTP server for tests: serves a folder, with byte-range requests (as S3, GCS,
nginx and GitHub releases do), which zarr needs to read chunks of a packed store over HTTP."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        m = _RANGE.match(spec or "")
        if m is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, last = m.groups()
        if first == "":  # a suffix range: the last N bytes
            start, stop = max(0, size - int(last)), size - 1
        else:
            start, stop = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        self.send_header("Content-Length", str(stop - start + 1))
        self.end_headers()
        self._remaining = stop - start + 1
        return f

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            block = source.read(min(65536, remaining))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)
        self._remaining = None


@contextlib.contextmanager
def serve(folder):
    """Serve `folder` at http://127.0.0.1:PORT; yields the base URL (no trailing slash)."""
    handler = functools.partial(RangeHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
