"""A non-HTTP server: greets first, then echoes each line: `python tests/netns/banner.py ADDR PORT`.

Server-first, like MySQL or SMTP: an HTTP proxy waiting for a request head would hang here.
"""

import socketserver
import sys

BANNER = b"HELLO raw-tcp\n"


class Banner(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(BANNER)
        for line in self.rfile:
            self.wfile.write(line)


if __name__ == "__main__":
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), Banner).serve_forever()
