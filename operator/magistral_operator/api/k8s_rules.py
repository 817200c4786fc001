"""The Kubernetes rules a value must meet where the operator passes it on, in two forms.

Each rule is written once here as a regular expression (RE2-compatible: the API server's CEL
`matches` and OpenAPI `pattern` use RE2) and, where a pattern is not enough, as a predicate
and a CEL expression. `spec.py` uses both forms on the same fields, so `kubectl apply`, the
operator and `magistral-operator render` refuse the same values. Sources:
k8s.io/apimachinery/pkg/util/validation (names, keys), resource.ParseQuantity (quantities),
distribution/reference (image references), git-check-ref-format (revisions).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# RFC 1123 label and subdomain (Secret, ConfigMap, PVC, StorageClass names).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 1035 label: what a Service name must be (the endpoint's name names its Service).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A ConfigMap or Secret key (IsConfigMapKey): also never "." or "..", never starting "..".
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
CONFIG_KEY_CEL = "self != '.' && self != '..' && !self.startsWith('..')"

# resource.Quantity without a sign (requests and sizes are never negative).
QUANTITY = (
    r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
QUANTITY_POSITIVE_CEL = "quantity(self).isGreaterThan(quantity('0'))"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def quantity_value(text: str) -> Decimal:
    """The value of a quantity string that matches QUANTITY (ValueError otherwise)."""
    match = re.fullmatch(QUANTITY[1:-1], text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    number, suffix = text[: match.start(3)] if match.group(3) else text, match.group(3) or ""
    try:
        value = Decimal(number.lstrip("+"))
    except InvalidOperation as exc:  # pragma: no cover - the pattern rules it out
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return value.scaleb(int(suffix[1:]))
    return value.scaleb(_DECIMAL[suffix])


def positive_quantity(text: str) -> str:
    """`text` if it is a quantity above zero, else ValueError naming the rule."""
    if quantity_value(text) <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return text


# A git revision: a commit sha, or a branch or tag name as git-check-ref-format allows,
# never an option (leading "-") and never a path that climbs ("..").
GIT_REVISION = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
GIT_REVISION_CEL = (
    "!self.contains('..') && !self.contains('//') && !self.endsWith('/') && "
    "!self.endsWith('.') && !self.endsWith('.lock') && !self.contains('/.')"
)


def git_revision(text: str) -> str:
    """`text` if it is a valid revision, else ValueError naming the rule broken."""
    if re.fullmatch(GIT_REVISION[1:-1], text) is None:
        raise ValueError(
            f"{text!r} is not a commit sha or a branch or tag name (letters, digits, '.', "
            "'_', '/', '-'; not starting with '-' or '.')"
        )
    if ".." in text or "//" in text or "/." in text or text.endswith(("/", ".", ".lock")):
        raise ValueError(f"{text!r} is not a valid branch or tag name ('..', '//', '/.', end)")
    return text


# A relative path inside a volume: no leading "/", no "." or ".." segment, no empty segment.
RELATIVE_PATH = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"
RELATIVE_PATH_CEL = "!self.split('/').exists(s, s == '..' || s == '.')"


def relative_path(text: str) -> str:
    """`text` if it is a relative path that stays inside its volume."""
    if text and (
        re.fullmatch(RELATIVE_PATH[1:-1], text) is None
        or any(s in (".", "..") for s in text.split("/"))
    ):
        raise ValueError(
            f"{text!r} must be a relative path inside the volume (segments of letters, digits, "
            "'.', '_', '-'; no leading '/', no '.' or '..' segment)"
        )
    return text


# An image reference (distribution/reference): [host[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
IMAGE_REFERENCE = (
    rf"^(?:{_DOMAIN}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
