"""What a served system is: an OpenAI-compatible endpoint, how to reach it, and (optionally) how to start it.

Plain values only (no torch, no HTTP): a params file is checked and a sweep planned without either. The
API key itself is never held here, only the name of the environment variable that holds it.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse

APIS = ("completions", "chat")
PROMPT_MODES = ("auto", "token_ids", "text")
SERVED_BACKEND = "served"  # the backend column of a served system's rows
SERVED_ATTN = "server"  # its attention implementation is the server's own: not perfkit's to choose
SERVED_DEVICE = "served"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """How a served system is reached (and started, where `launch` is set).

    `extra_body` is canonical JSON (sorted keys) of the engine-specific request fields, `launch_env` sorted
    (NAME, VALUE) pairs: both stay hashable, and a system is defined by them."""

    api: str = "completions"
    base_url: str | None = None  # ".../v1"; None: the server perfkit launches, at http://127.0.0.1:{port}/v1
    served_model: str | None = None  # the name requests carry; None: the point's model as given
    tokenizer: str | None = None  # a local tokenizer folder, for text prompts; None: the model's folder
    prompt: str = "auto"  # token_ids (completions only), text, or auto (token ids where the API takes them)
    extra_body: str = "{}"
    api_key_env: str | None = None
    launch: str | None = None  # a command with {port} and {model} (and {served_model}) filled in by perfkit
    launch_env: tuple = ()
    ready_path: str = "/health"  # below the server's root (base_url without /v1)
    ready_timeout_s: float = 300.0
    request_timeout_s: float = 600.0
    device_name: str | None = None  # the server's hardware, as the user states it (for MFU/MBU and mixing checks)

    def prompt_mode(self) -> str:
        if self.prompt != "auto":
            return self.prompt
        return "token_ids" if self.api == "completions" else "text"

    def extra(self) -> dict:
        return json.loads(self.extra_body)

    def model_name(self, model: str) -> str:
        return self.served_model or model

    def key(self) -> dict:
        """What defines the system's points beyond its label (perfkit.rows.point_fields): how requests are
        made and what server answers them. The URL of a server perfkit starts is not part of it (its port
        changes from run to run), nor is the key's variable name."""
        return {"api": self.api, "served_model": self.served_model, "prompt": self.prompt_mode(),
                "extra_body": self.extra_body, "launch": self.launch,
                "launch_env": [list(kv) for kv in self.launch_env]}


def root_of(base_url: str) -> str:
    """scheme://host:port of a base URL (where /health, /version and /metrics live)."""
    u = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "", "", ""))


def shown_url(url: str) -> str:
    """A URL without any user:password part: what rows, logs and messages show."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if u.port is not None:
        netloc += f":{u.port}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))


def check_base_url(url: str) -> str | None:
    """Why `url` cannot be an endpoint's base URL (a phrase), or None."""
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if u.scheme not in ("http", "https") or not u.hostname:
        return "is not an http:// or https:// URL with a host"
    if u.query or u.fragment:
        return "has a query or fragment"
    if u.username is not None or u.password is not None:
        return "holds a user or password (put the key in the variable endpoint.api_key_env names)"
    if any(c.isspace() for c in url):
        return "holds whitespace"
    return None
