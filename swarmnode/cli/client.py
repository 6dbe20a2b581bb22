"""A small synchronous client for a node's REST API (the CLI's only way to talk to a node)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from swarmnode.errors import UserError


@dataclass(frozen=True)
class ApiClient:
    base_url: str
    secret: str | None = None
    timeout_s: float = 600.0

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, str | None] | None = None) -> bytes:
        url = self.base_url.rstrip("/") + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.secret:
            req.add_header("Authorization", f"Bearer {self.secret}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or exc.reason
            raise UserError(str(message), exc.code) from None
        except urllib.error.URLError as exc:
            raise UserError(f"cannot reach the node at {self.base_url} ({exc.reason}); is "
                            "`swarmnode serve` running there? Set --node or SWARMNODE_URL",
                            503) from None
        except TimeoutError:
            raise UserError(f"the node at {self.base_url} did not answer in "
                            f"{self.timeout_s:.0f}s", 504) from None

    def get(self, path: str, **query: str | None) -> Any:
        return json.loads(self._request("GET", path, query=query))

    def get_text(self, path: str, **query: str | None) -> str:
        return self._request("GET", path, query=query).decode(errors="replace")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return json.loads(self._request("POST", path, body=body))
