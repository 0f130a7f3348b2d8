"""Text that is safe to put in a log line or an error message.

:func:`safe_for_log` escapes what a terminal or a log parser would interpret (control
characters, escape sequences, newlines, bidi overrides) in values that come from outside,
such as equipment ids. :func:`redact` masks credentials (URL passwords, ``password=``
settings, known secret values) in messages that may echo a URL or a DSN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"


def safe_for_log(text: object, max_len: int = 200) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``, ``\\u202e``),
    backslashes doubled so the escaping is unambiguous, and cut to ``max_len`` characters.

    >>> safe_for_log("pump-1\\x1b[31m\\nfake line")
    'pump-1\\\\x1b[31m\\\\nfake line'
    >>> safe_for_log("a" * 10, max_len=4)
    'aaaa…(10 chars)'
    >>> safe_for_log("turbofan-0001")
    'turbofan-0001'
    """
    s = text if isinstance(text, str) else str(text)
    cut = len(s) > max_len
    out = []
    for ch in s[:max_len]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out) + (f"…({len(s)} chars)" if cut else "")


# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/\s:@]*:)(?P<pw>[^@\s/]*)(?=@)")
# password=..., "sasl.password": "...", token=..., api_key: ...
_KEYWORD = re.compile(
    r"(?P<head>(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
    r"[\"']?\s*[=:]\s*[\"']?)(?P<pw>[^\s&\"',;}]+)",
    re.IGNORECASE,
)


def secret_parts(url: str) -> list[str]:
    """The password of a URL or a keyword DSN (empty when it has none), to mask wherever a
    library echoes part of it.

    >>> secret_parts("postgresql://pm:s3cret@db:5432/pm")
    ['s3cret']
    >>> secret_parts("host=db password=s3cret dbname=pm")
    ['s3cret']
    >>> secret_parts("redis://db:6379/0")
    []
    """
    found = [m.group("pw") for m in _URL_PASSWORD.finditer(url)]
    found += [m.group("pw") for m in _KEYWORD.finditer(url)]
    return [p for p in found if p]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, ``password=``-style values and every given secret
    (and its password part) replaced by ``***``.

    >>> redact("cannot reach https://bob:pw1@mlflow:5000/api")
    'cannot reach https://bob:***@mlflow:5000/api'
    >>> redact('invalid dsn: "host=db password=pw2 dbname"')
    'invalid dsn: "host=db password=*** dbname"'
    >>> redact("token xyz123 rejected", secrets=["xyz123"])
    'token *** rejected'
    """
    values: set[str] = set()
    for secret in secrets:
        if secret:
            values.add(secret)
            values.update(secret_parts(secret))
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 3:  # masking "a" everywhere would garble the message
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEYWORD.sub(lambda m: m.group("head") + MASK, text)
