"""An HTTP app that answers with who called it: `python tests/netns/echo.py PORT`.

The peer address tells whether a request came straight from the network or through the sidecar
(which reaches the app from 127.0.0.1).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "peer": self.client_address[0],
                "host": self.headers.get("host", ""),
                "x-forwarded-for": self.headers.get("x-forwarded-for", ""),
                "path": self.path,
                "header_names": sorted({name.lower() for name in self.headers}),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
