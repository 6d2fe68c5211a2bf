"""A small Wharf sandbox client, standard library only.

    from wharf_client import Wharf
    wharf = Wharf("http://127.0.0.1:8080", api_key="wharf_...")
    sbx = wharf.create_sandbox(profile="docker", idempotency_key="job-42")
    print(sbx.exec(["python3", "-c", "print(6*7)"]).stdout)   # 42
    sbx.write_file("data/in.txt", b"hello")                     # parent dir must exist
    sbx.read_file("data/in.txt")                                # b"hello"
    sbx.delete()
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union


class WharfError(Exception):
    """An error answer: `code` is Wharf's stable error code."""

    def __init__(self, status: int, code: str, message: str, retry_after_ms: Optional[int] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


@dataclass
class ExecResult:
    exit_code: Optional[int]
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool


class Wharf:
    def __init__(self, base_url: str, api_key: str, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Union[bytes, dict, None] = None,
                 headers: Optional[Dict[str, str]] = None, raw: bool = False):
        all_headers = {"Authorization": f"Bearer {self.api_key}"}
        data = None
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        elif body is not None:
            data = body
            all_headers["Content-Type"] = "application/octet-stream"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                error = json.loads(text)["error"]
            except (ValueError, KeyError):
                raise WharfError(err.code, "http_error", text.decode(errors="replace")) from None
            raise WharfError(err.code, error["code"], error["message"], error.get("retry_after_ms")) from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def info(self) -> dict:
        return self._request("GET", "/v1/info")

    def create_sandbox(self, profile: str = "local", idempotency_key: Optional[str] = None) -> "Sandbox":
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Sandbox(self, self._request("POST", "/v1/sandboxes", {"profile": profile}, headers))

    def sandbox(self, sandbox_id: str) -> "Sandbox":
        return Sandbox(self, self._request("GET", f"/v1/sandboxes/{quote(sandbox_id)}"))

    def list_sandboxes(self, status: Optional[str] = None, profile: Optional[str] = None) -> List["Sandbox"]:
        """Every page of the caller's sandboxes."""
        found, cursor = [], None
        while True:
            query = {k: v for k, v in {"status": status, "profile": profile, "cursor": cursor}.items() if v}
            page = self._request("GET", "/v1/sandboxes?" + urllib.parse.urlencode(query))
            found.extend(Sandbox(self, item) for item in page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return found


def quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


class Sandbox:
    def __init__(self, client: Wharf, record: dict):
        self.client = client
        self.record = record
        self.id = record["id"]

    @property
    def status(self) -> str:
        return self.record["status"]

    def _path(self, suffix: str) -> str:
        return f"/v1/sandboxes/{quote(self.id)}{suffix}"

    def refresh(self) -> "Sandbox":
        self.record = self.client._request("GET", self._path(""))
        return self

    def exec(self, argv: Union[Sequence[str], str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
             stdin: Optional[str] = None, timeout_ms: Optional[int] = None) -> ExecResult:
        """Runs `argv` (a list) or a shell command line (a string)."""
        body: dict = {"argv": list(argv)} if not isinstance(argv, str) else {"command": argv}
        if env:
            body["env"] = env
        if cwd:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = stdin
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        return ExecResult(**self.client._request("POST", self._path("/exec"), body))

    def write_file(self, path: str, data: bytes) -> dict:
        return self.client._request("PUT", self._path("/files/" + quote(path)), data)

    def read_file(self, path: str) -> bytes:
        return self.client._request("GET", self._path("/files/" + quote(path)), raw=True)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.client._request("DELETE", self._path("/files/" + quote(path) + ("?recursive=true" if recursive else "")))

    def mkdir(self, path: str) -> None:
        self.client._request("PUT", self._path("/dirs/" + quote(path)))

    def list_dir(self, path: str = "") -> List[dict]:
        suffix = "/dirs/" + quote(path) if path else "/dirs"
        return self.client._request("GET", self._path(suffix))["entries"]

    def stop(self) -> "Sandbox":
        self.record = self.client._request("POST", self._path("/stop"))
        return self

    def start(self) -> "Sandbox":
        self.record = self.client._request("POST", self._path("/start"))
        return self

    def keepalive(self) -> None:
        self.record = self.client._request("POST", self._path("/keepalive"))

    def events(self, after: int = 0) -> List[dict]:
        return self.client._request("GET", self._path(f"/events?after={after}"))["items"]

    def delete(self) -> None:
        self.client._request("DELETE", self._path(""))
