"""One HTTP request from inside a network namespace, as an app would make it (a plain connect()).

`python tests/netns/client.py URL [--host H] [--method M] [--header NAME:VALUE]...` prints
{"status", "headers", "body"} as JSON; exit 1 with the error when the connection fails.
"""

import argparse
import http.client
import json
import sys
import urllib.parse


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--host", default="")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE, repeatable")
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=5)
    try:
        headers = {"Host": args.host} if args.host else {}
        headers.update(item.split(":", 1) for item in args.header)  # type: ignore[misc]
        connection.request(args.method, url.path or "/", headers=headers)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as error:
        print(f"{args.method} {args.url}: {error!r}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    json.dump(
        {"status": response.status, "headers": dict(response.getheaders()), "body": body},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
