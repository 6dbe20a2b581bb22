"""One HTTP call, run inside a network namespace for tests/harness.py.

argv: METHOD URL [BEARER]; the body is stdin. Prints the status on the first line, then the
reply body (status 0 and the error when the node cannot be reached).
"""

import sys
import urllib.error
import urllib.request


def main() -> None:
    method, url = sys.argv[1], sys.argv[2]
    secret = sys.argv[3] if len(sys.argv) > 3 else ""
    body = sys.stdin.buffer.read() or None
    req = urllib.request.Request(url, data=body, method=method)
    if secret:
        req.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, reply = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, exc.read()
    except OSError as exc:
        status, reply = 0, str(exc).encode()
    sys.stdout.buffer.write(f"{status}\n".encode() + reply)


if __name__ == "__main__":
    main()
