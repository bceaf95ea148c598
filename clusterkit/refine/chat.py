"""The HTTP refiner: an OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style gateways,
vLLM, llama.cpp, Ollama's /v1) refines each prompt, with the stdlib's urllib.

One POST per prompt: ``{"model", "messages": [system prompt, prompt], "temperature"}``; the
refined prompt is ``choices[0].message.content``, whitespace collapsed. The API key is read from
the environment variable whose *name* the config gives (``api_key_env``) and sent as
``Authorization: Bearer``; it never appears in a message, a record or ``repr``: the endpoint is
shown without its query string (the ``repr`` shows neither the URL nor the key), and any text
the server sends back is shown with the key blanked.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from clusterkit.errors import RefineError, UserError

BODY_TAIL = 300


@dataclass(frozen=True)
class HttpRefiner:
    """POSTs each prompt to ``url`` as a chat completion for ``model``. The ``repr`` leaves out the
    key and the URL (its query string may carry a token)."""

    url: str = field(repr=False)
    model: str
    system_prompt: str = field(repr=False)
    timeout_s: float
    temperature: float | None = 0.0
    api_key: str | None = field(default=None, repr=False)
    name: str = "http"
    pure = False  # not a field: it sends the prompts (and the key), so a dry run does not call it

    def __post_init__(self) -> None:
        check_url(self.url, "http.url")

    @property
    def endpoint(self) -> str:
        """The URL without its query string (which may carry a token)."""
        return _without_query(self.url)

    def describe(self) -> str:
        return f"http {self.model} at {self.endpoint}"

    def refine(self, prompt: str) -> str:
        body = {"model": self.model, "messages": [{"role": "system", "content": self.system_prompt},
                                                  {"role": "user", "content": prompt}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        what = f"refine endpoint {self.endpoint} (model {self.model})"
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self._redact(_error_detail(exc))
            hint = "check http.api_key_env and that the key is valid" if exc.code in (401, 403) else None
            if 300 <= exc.code < 400:
                detail = f"a redirect to {_without_query(exc.headers.get('Location', '?'))}, not followed"
                hint = "set http.url to the final address (redirects are not followed: they would carry the key)"
            raise RefineError(f"{what} answered HTTP {exc.code}{': ' + detail if detail else ''}", hint=hint) from None
        except (socket.timeout, TimeoutError):
            raise RefineError(f"{what} did not answer within {self.timeout_s:g} s",
                              hint="raise http.timeout_s in the refine config") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise RefineError(f"{what} did not answer within {self.timeout_s:g} s",
                                  hint="raise http.timeout_s in the refine config") from None
            raise RefineError(f"cannot reach {what}: {self._redact(str(exc.reason))}") from None
        except OSError as exc:
            raise RefineError(f"cannot reach {what}: {self._redact(str(exc))}") from None
        except (ValueError, http.client.HTTPException) as exc:  # a header or address urllib will not send
            raise RefineError(f"cannot send to {what}: {self._redact(str(exc))}",
                              hint="check http.url in the refine config") from None
        return self._content(raw, what)

    def _content(self, raw: bytes, what: str) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self._redact(raw.decode("utf-8", errors="replace")[:BODY_TAIL])
            raise RefineError(f"{what} did not answer with a chat completion (choices[0].message.content): "
                              f"{snippet!r}") from None
        text = " ".join(content.split()) if isinstance(content, str) else ""
        if not text:
            raise RefineError(f"{what} answered an empty refined prompt")
        return text

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as ``HTTPError``: urllib would resend the Authorization header to
    wherever the server points, another host included."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check_url(url: object, where: str) -> str:
    """An http(s) URL without credentials in it (they belong in the environment variable)."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{where} must be an http:// or https:// URL of a chat-completions endpoint",
                        hint="e.g. https://api.openai.com/v1/chat/completions")
    if parts.username or parts.password:
        raise UserError(f"{where} must not hold credentials (user:password@)",
                        hint="put the key in an environment variable and name it in http.api_key_env")
    return url


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI: ``{"error": {"message": ...}}``), else the body's start."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    text = raw.decode("utf-8", errors="replace")
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            text = message
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(text.split()) or str(exc.reason or "")
    return text[:BODY_TAIL] + ("…" if len(text) > BODY_TAIL else "")
