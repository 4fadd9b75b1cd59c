"""Secrets in URIs: masked wherever a URI is written or printed, the real one used only to connect.

A URI such as ``postgresql://harness:s3cret@db/mlflow`` or ``http://user:s3cret@mlflow:5000`` carries a password;
``mask_uri`` replaces it (and the value of secret-looking query parameters such as ``?password=`` or ``?token=``)
with ``***``, the way SQLAlchemy's ``hide_password`` renders it. Config files, MLflow params, ``trainer_state.json``,
reports, study attributes and console lines hold the masked form only.

A masked URI cannot be used to connect: :func:`unmask_uri` gives back the real URI when one of the candidates
(``--tracking-uri``, ``$MLFLOW_TRACKING_URI``) masks to it, and otherwise says where the password has to come from.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

MASK = "***"

# scheme://user:PASSWORD@host - the password stops at '@', '/', whitespace (a '/' in a password must be %2F-encoded)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@?#]*:)([^@\s/]*)(@)")
# ?password=... &token=... (libpq, object stores' signatures, API keys)
_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|pass|secret|token|access_token|auth|auth_token|api_key|apikey|key|sig|signature|sas)=)([^&#\s]*)",
    re.IGNORECASE,
)


class SecretMissingError(ValueError):
    """A masked URI was to be used for a connection and the real one is nowhere to be found."""


def mask_uri(text: str | None) -> str | None:
    """``text`` (a URI, or any text holding URIs) with passwords and secret query values replaced by ``***``."""
    if not text or not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    out = _USERINFO.sub(lambda m: m.group(1) + (MASK if m.group(2) else "") + m.group(3), text)
    return _QUERY.sub(lambda m: m.group(1) + (MASK if m.group(2) else ""), out)


def has_secret(text: str | None) -> bool:
    return mask_uri(text) != text


def is_masked(uri: str | None) -> bool:
    """True for a URI whose password (or secret query value) was replaced by ``***``."""
    if not uri:
        return False
    return any(m.group(2) == MASK for m in _USERINFO.finditer(uri)) or any(
        m.group(2) == MASK for m in _QUERY.finditer(uri)
    )


def mask_secrets(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings) with every string passed through :func:`mask_uri`."""
    if isinstance(obj, str):
        return mask_uri(obj)
    if isinstance(obj, dict):
        return {k: mask_secrets(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(mask_secrets(v) for v in obj)
    return obj


def unmask_uri(
    uri: str,
    candidates: Iterable[str | None],
    *,
    what: str = "tracking URI",
    hint: str = "set MLFLOW_TRACKING_URI (or pass --tracking-uri) to the full URI",
) -> str:
    """The real URI behind ``uri``: ``uri`` itself when it is not masked, else the first candidate that masks to it."""
    if not is_masked(uri):
        return uri
    for c in candidates:
        if c and not is_masked(c) and mask_uri(c) == uri:
            return c
    raise SecretMissingError(
        f"the {what} {uri} was saved without its password, which is never written to disk or MLflow; {hint}"
    )


def without_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part and secret query values (for links a reader clicks)."""
    return mask_uri(re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]*@", r"\1", uri)) if uri else uri
