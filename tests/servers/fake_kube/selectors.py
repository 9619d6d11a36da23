"""Label and field selectors, node selector terms and tolerations, with the server's semantics.

- Label selector strings: ``staging/src/k8s.io/apimachinery/pkg/labels/selector.go`` (``=``, ``==``,
  ``!=``, ``in``, ``notin``, ``key``, ``!key``; ``!=`` and ``notin`` also match when the key is absent).
- Field selector strings: ``staging/src/k8s.io/apimachinery/pkg/fields/selector.go`` (``=``, ``==``,
  ``!=``, comma for AND, backslash escapes); only the fields a type registers are accepted.
- ``LabelSelector`` objects (matchLabels, matchExpressions): ``.../apis/meta/v1/helpers.go``.
- Node selector terms and tolerations: ``staging/src/k8s.io/component-helpers/scheduling/corev1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import bad_request

Labels = Mapping[str, str]
Requirement = tuple[str, str, frozenset[str]]  # key, operator, values
_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|[^\s!=(),]+)")


def parse_labels(text: str) -> list[Requirement]:
    """Parse a labelSelector query string; 400 BadRequest on a syntax error."""
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    reqs: list[Requirement] = []
    i = 0

    def fail(why: str) -> None:
        raise bad_request(f"unable to parse requirement: {why}")

    while i < len(tokens):
        if tokens[i] == "!":
            if i + 1 >= len(tokens):
                fail("found '', expected: identifier")
            reqs.append((tokens[i + 1], "!", frozenset()))
            i += 2
        else:
            key = tokens[i]
            op = tokens[i + 1] if i + 1 < len(tokens) else ","
            if op in (",",):
                reqs.append((key, "exists", frozenset()))
                i += 1
            elif op in ("=", "==", "!="):
                if i + 2 >= len(tokens) or tokens[i + 2] == ",":
                    value, i = "", i + 2
                else:
                    value, i = tokens[i + 2], i + 3
                reqs.append((key, "!=" if op == "!=" else "=", frozenset({value})))
            elif op in ("in", "notin"):
                if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                    fail(f"found '{tokens[i + 2] if i + 2 < len(tokens) else ''}', expected: '('")
                j, values = i + 3, set()
                while j < len(tokens) and tokens[j] != ")":
                    if tokens[j] != ",":
                        values.add(tokens[j])
                    j += 1
                if j >= len(tokens):
                    fail("found '', expected: ')'")
                reqs.append((key, op, frozenset(values)))
                i = j + 1
            else:
                fail(f"found '{op}', expected: '=', '!=', '==', 'in', notin'")
        if i < len(tokens):
            if tokens[i] != ",":
                fail(f"found '{tokens[i]}', expected: ','")
            i += 1
    return reqs


def match_labels(reqs: Sequence[Requirement], labels: Labels | None) -> bool:
    """Whether ``labels`` satisfy every requirement."""
    labels = labels or {}
    for key, op, values in reqs:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
    return True


def parse_fields(text: str, allowed: frozenset[str]) -> list[tuple[str, bool, str]]:
    """Parse a fieldSelector into (field, equal?, value); 400 for a field the type does not register."""
    out: list[tuple[str, bool, str]] = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        found = next(((op, idx) for op in ("!=", "==", "=") if (idx := _find_unescaped(term, op)) >= 0), None)
        if found is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        op, idx = found
        key, value, equal = term[:idx], _unescape(term[idx + len(op) :]), op != "!="
        if key not in allowed:
            # pkg/apis/core/v1/conversion.go: fmt.Errorf("field label not supported: %s", label)
            raise bad_request(f"field label not supported: {key}")
        out.append((key, equal, value))
    return out


def _find_unescaped(text: str, token: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(token, i):
            return i
        i += 1
    return -1


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
        elif text[i] == sep:
            parts.append(cur)
            cur, i = "", i + 1
        else:
            cur, i = cur + text[i], i + 1
    parts.append(cur)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def field_value(obj: Mapping[str, Any], dotted: str) -> str:
    """The string a field selector compares: a missing field reads as "" (booleans as true/false)."""
    cur: Any = obj
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        # the core Event field "source" is source.component (pkg/apis/core/v1/conversion.go)
        if dotted == "source":
            return field_value(obj, "source.component")
        return ""
    return cur if isinstance(cur, str) else str(cur)


def match_fields(terms: Sequence[tuple[str, bool, str]], obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` satisfies every field term."""
    return all((field_value(obj, key) == value) == equal for key, equal, value in terms)


def selector_matches(selector: Mapping[str, Any] | None, labels: Labels | None) -> bool:
    """A ``LabelSelector`` object: an empty selector matches everything, a null one nothing."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or ())
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _node_expr_matches(expr: Mapping[str, Any], get: Callable[[str], str | None]) -> bool:
    value, op, values = get(expr["key"]), expr["operator"], list(expr.get("values") or ())
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            left, right = int(value), int(values[0])
        except ValueError:
            return False
        return left > right if op == "Gt" else left < right
    return False


def node_selector_terms_match(terms: Sequence[Mapping[str, Any]], node: Mapping[str, Any]) -> bool:
    """Required node affinity: the terms are ORed; a term ANDs its expressions; no term matches nothing."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    name = (node.get("metadata") or {}).get("name")
    for term in terms:
        exprs, fields = term.get("matchExpressions") or (), term.get("matchFields") or ()
        if not exprs and not fields:
            continue
        if all(_node_expr_matches(e, labels.get) for e in exprs) and all(
            _node_expr_matches(f, lambda key: name if key == "metadata.name" else None) for f in fields
        ):
            return True
    return False


def tolerates(tolerations: Sequence[Mapping[str, Any]] | None, taint: Mapping[str, Any]) -> bool:
    """``v1helper.TolerationsTolerateTaint``: effect, key and value (operator Exists ignores the value)."""
    for tol in tolerations or ():
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        if not tol.get("key"):
            if op == "Exists":
                return True
            continue
        if tol["key"] != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False
