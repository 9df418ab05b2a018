"""Which parts of a URI are secrets, and the text int8flow shows, stores and logs in their place.

A model or data URI may carry credentials: user-info (``https://alice:token@host/...``) or a signed
query (an Azure SAS ``sig``, S3's ``X-Amz-Signature`` and ``X-Amz-Credential``, GCS's
``X-Goog-Signature``, an ``access_token``). int8flow needs them to read, so the URI the user gave is
used as given, in memory; every copy that leaves the process (run files, reports, MLflow params and
tags, terminal lines, task logs) is this module's redaction of it. Redaction keeps the scheme, host,
path and the query parameters that are not secret, so a reader can still tell runs apart.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query parameter names whose value is a secret (compared lower-case), and name fragments that mark one.
SECRET_QUERY_NAMES = frozenset({"sig", "signature", "code", "key", "password", "passwd", "pwd", "secret"})
SECRET_QUERY_FRAGMENTS = ("token", "signature", "credential", "secret", "password", "apikey", "api_key", "auth")

# A URL inside any text: scheme://, then everything up to whitespace or a character that ends a quoted value.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def is_secret_query_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_QUERY_NAMES or any(fragment in lowered for fragment in SECRET_QUERY_FRAGMENTS)


def redact_uri(uri: str) -> str:
    """``uri`` with its user-info and secret query values replaced by ``REDACTED``; other text unchanged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # not parseable (a bad port, a stray bracket): nothing of it can be shown safely
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        host = parts.hostname or ""
        netloc = f"{REDACTED}@{host}" + (f":{port}" if port is not None else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_query_name(name) for name, _ in pairs):
            query = urlencode(
                [(name, REDACTED if is_secret_query_name(name) else value) for name, value in pairs], safe=REDACTED
            )
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (a message, a JSON document, a log line) with every URL in it redacted."""
    return _URL.sub(lambda match: redact_uri(match.group(0)), text)


def has_secrets(uri: str) -> bool:
    return redact_uri(uri) != uri
