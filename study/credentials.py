"""Credentials never printed or logged: a store URL's password and secret-named query parameters redacted
(:func:`redact`), an error message scrubbed of every piece of them (:func:`scrub`), and a notebook's
tracking URI kept out of the written file while its kernel still reaches the store
(:func:`credentials_hidden`, :func:`with_credentials`). No torch, no MLflow: the configuration checks use it."""

from __future__ import annotations

import contextlib
import os
import re
from urllib.parse import urlsplit, urlunsplit


_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"([?&;][^=&;#?]*?(?:pass|pwd|secret|token|key|auth|credential|signature)[^=&;#?]*=)([^&;#]*)",
                           re.IGNORECASE)
_SECRET_DSN = re.compile(r"((?:^|\s)[\w.-]*(?:pass|pwd|secret|token|key|auth|credential|signature)[\w.-]*\s*=\s*)"
                         r"('(?:[^'\\]|\\.)*'?|[^\s']*)", re.IGNORECASE)
"""A secret in a libpq-style ``key=value`` connection string (``host=db password='x y' dbname=optuna``)."""
_SCHEME = re.compile(r"^[^:/@]*://")


def redact(url: str | None) -> str | None:
    """A URL with every credential replaced by ``***`` (never log or print credentials): the password
    of its user information, and the value of every query parameter named like a secret (``password``,
    ``pwd``, ``secret``, ``token``, ``key`` ...), also in a libpq ``key=value`` string (``host=db password=x``). A malformed URL (no scheme, an unencoded ``/``, ``#``
    or ``@`` in the password) loses everything between the user name's ``:`` and the last ``@``, or
    all that precedes the last ``@`` when there is no ``:``: better too much hidden than a password shown."""
    if not url:
        return url
    return _SECRET_DSN.sub(lambda m: m.group(1) + "***", _SECRET_QUERY.sub(lambda m: m.group(1) + "***", _redact_userinfo(url)))


def _redact_userinfo(url: str) -> str:
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        parts, password = None, None
    well_formed = (parts is not None and parts.netloc.count("@") == 1 and parts.netloc in url  # (urlsplit drops \t\r\n)
                   and "@" not in url.split(parts.netloc, 1)[1])
    if well_formed and password is None and ":" not in parts.netloc.partition("@")[0]:
        return url  # a user name alone
    if well_formed and password is not None and f":{password}@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@")))
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    userinfo, _, host = url[start:].rpartition("@")
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return f"{url[:start]}{user}{':' if user else ''}***@{host}"


def secrets_of(url: str | None) -> list[str]:
    """The credentials ``url`` holds: its password (also of a malformed URL) and the values of query
    parameters named like secrets."""
    if not url:
        return []
    found = set()
    scheme = _SCHEME.match(url)
    userinfo = url[scheme.end() if scheme else 0:].rpartition("@")[0]
    if userinfo and redact(url) != url:
        found.add(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
    try:
        if urlsplit(url).password:
            found.add(urlsplit(url).password)
    except ValueError:
        pass
    found.update(m.group(2) for m in _SECRET_QUERY.finditer(url))
    found.update(m.group(2).strip("'") for m in _SECRET_DSN.finditer(url))
    return sorted((s for s in found if s), key=len, reverse=True)


CREDENTIALS_VARIABLE = "MLFLOW_TRACKING_URI"
"""Where a tracking URI with a password travels to a notebook's kernel: the notebook's parameters (written
into the executed file by papermill) hold it redacted; :func:`with_credentials` finds it here."""


def with_credentials(uri: str | None) -> str | None:
    """``uri`` as given, or, when it is a redacted URI (``***``), the URI in ``$MLFLOW_TRACKING_URI`` it
    was redacted from (a notebook executed by ``study.reporting.analysis.run_notebook``)."""
    full = os.environ.get(CREDENTIALS_VARIABLE)
    return full if uri and "***" in uri and full and redact(full) == uri else uri


@contextlib.contextmanager
def credentials_hidden(parameters: dict):
    """``parameters`` with ``tracking_uri`` redacted, for a file that is written (a notebook's injected
    parameters and papermill metadata); while the block runs, the full URI is in the environment the
    kernel inherits (:func:`with_credentials`). Other parameters with a credential are redacted."""
    shown = {k: redact(v) if isinstance(v, str) else v for k, v in parameters.items()}
    full = parameters.get("tracking_uri")
    if not isinstance(full, str) or shown["tracking_uri"] == full:
        yield shown
        return
    previous = os.environ.get(CREDENTIALS_VARIABLE)
    os.environ[CREDENTIALS_VARIABLE] = full
    try:
        yield shown
    finally:
        if previous is None:
            os.environ.pop(CREDENTIALS_VARIABLE, None)
        else:
            os.environ[CREDENTIALS_VARIABLE] = previous


def scrub(text: str, *urls: str | None, shortest: int = 4) -> str:
    """``text`` (an error message) with each URL redacted and every run of ``shortest`` or more
    characters that occurs in one of their credentials replaced by ``***``: a message that quotes a
    malformed URL in pieces shows no piece of its password."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url))
        for secret in secrets_of(url):
            out, i = [], 0
            while i < len(text):
                j = i + shortest
                if j <= len(text) and text[i:j] in secret:
                    while j < len(text) and text[i:j + 1] in secret:
                        j += 1
                    out.append("***")
                    i = j
                else:
                    out.append(text[i])
                    i += 1
            text = "".join(out)
    return text
