"""schemas.py -- JSON Schemas made from the task table's parameter SPECs, and 400 messages.

to_schema() turns one SPEC (tasks.py) into a draft-7 JSON Schema: int/number bounds, string and
list lengths, choices, unique items, dict fields (required, no unknown keys unless the table
says so), one_of alternatives (anyOf: they are disjoint), nullable, and a list that also takes a
bare string. A `cap(path, spec)` callback may lower a max / max_len (the front end's
CELERIAC_MAX_* settings); it can never raise one. Each schema keeps the SPEC's doc as
"description".

Validator is jsonschema's Draft7Validator with the table's types: an "integer" is a JSON integer
and never a bool (jsonschema would take 1.0 and True), a "number" is finite (it would take
NaN). Arrays of plain numbers (token ids, weights) are checked in one tight loop and only the
failing items go through the generic machinery, which costs ~3 us an item: a body may carry
a million token ids.

message() picks the first error in field order and words it as this API always has, as
"<path>: <what was wrong>", e.g. "data[2].tokens[5]: must be >= 0, got -1",
"rank: must be <= 64, got 65", "adam_params: unknown field(s) 'lr'; allowed: ...".
"""

import math

from jsonschema import Draft7Validator, validators

_ARTICLE_TYPE = {"integer": "an integer", "number": "a finite number", "string": "a string",
                 "array": "an array", "object": "an object", "boolean": "a boolean",
                 "null": "null"}
_FAST_KEYS = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
              "description"}


def join(path, name):
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------------------------
# SPEC -> JSON Schema


def to_schema(spec, path, cap):
    """The JSON Schema of SPEC `spec` found at `path` ("data[].tokens": [] is a list's items).
    cap(path, spec) returns a tighter max / max_len, or None."""
    t = spec.get("type")
    s = {}
    if t in ("int", "number"):
        s["type"] = "integer" if t == "int" else "number"
        if "min" in spec:
            s["exclusiveMinimum" if spec.get("min_exclusive") else "minimum"] = spec["min"]
        hi, hi_open = spec.get("max"), bool(spec.get("max_exclusive"))
        c = cap(path, spec)
        if c is not None and (hi is None or c < hi):
            hi, hi_open = c, False
        if hi is not None:
            s["exclusiveMaximum" if hi_open else "maximum"] = hi
    elif t == "str":
        s["type"] = "string"
        _lengths(s, spec, path, cap, "minLength", "maxLength")
        if "choices" in spec:
            s["enum"] = list(spec["choices"])
    elif t == "bool":
        s["type"] = "boolean"
    elif t == "list":
        s["type"] = "array"
        _lengths(s, spec, path, cap, "minItems", "maxItems")
        if spec.get("unique"):
            s["uniqueItems"] = True
        if "items" in spec:
            s["items"] = to_schema(spec["items"], path + "[]", cap)
    elif t == "dict":
        fields = spec.get("fields", [])
        s["type"] = "object"
        s["properties"] = {f["name"]: to_schema(f, join(path, f["name"]), cap) for f in fields}
        s["required"] = [f["name"] for f in fields if f.get("required")]
        s["additionalProperties"] = bool(spec.get("extra_fields"))
    elif t == "one_of":
        s["anyOf"] = [to_schema(alt, path, cap) for alt in spec["one_of"]]
    elif t != "any":
        raise ValueError(f"{path or 'a parameter'}: unknown type {t!r} in the task table")
    if spec.get("nullable"):
        if "type" in s:
            s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"].append(None)
        if "anyOf" in s:
            s["anyOf"].append({"type": "null"})
    if spec.get("doc"):
        s["description"] = spec["doc"]
    if t == "list" and spec.get("also_str") and "items" in s:
        # A bare string stands for a one-item list (e.g. sampling_params.stop).
        s["alsoString"] = True
        s = {"if": {"type": "string"}, "then": s["items"], "else": s,
             **({"description": spec["doc"]} if spec.get("doc") else {})}
    return s


def _lengths(s, spec, path, cap, lo_key, hi_key):
    if "min_len" in spec:
        s[lo_key] = spec["min_len"]
    hi = spec.get("max_len")
    c = cap(path, spec)
    if c is not None and (hi is None or c < hi):
        hi = c
    if hi is not None:
        s[hi_key] = hi


# --------------------------------------------------------------------------------------------
# The validator


def _is_int(_checker, v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(_checker, v):
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, float) and math.isfinite(v))


def _fast_check(items):
    """A predicate equal to `items` when it is a plain int/number schema, else None."""
    if not isinstance(items, dict) or set(items) - _FAST_KEYS:
        return None
    kind = items.get("type")
    if kind not in ("integer", "number"):
        return None
    lo, hi = items.get("minimum"), items.get("maximum")
    xlo, xhi = items.get("exclusiveMinimum"), items.get("exclusiveMaximum")
    typed = _is_int if kind == "integer" else _is_number

    def ok(v):
        return (typed(None, v) and (lo is None or v >= lo) and (hi is None or v <= hi)
                and (xlo is None or v > xlo) and (xhi is None or v < xhi))
    return ok


_draft7_items = Draft7Validator.VALIDATORS["items"]


def _items(validator, items, instance, schema):
    ok = _fast_check(items)
    if ok is None or not validator.is_type(instance, "array"):
        yield from _draft7_items(validator, items, instance, schema)
        return
    for index, item in enumerate(instance):
        if not ok(item):
            yield from validator.descend(item, items, path=index)


Validator = validators.extend(
    Draft7Validator, validators={"items": _items},
    type_checker=Draft7Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_int, "number": _is_number}))


# --------------------------------------------------------------------------------------------
# Errors -> messages


def tname(v):
    """The JSON name of a value's type, as messages say it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number" if math.isfinite(v) else repr(v).replace("inf", "Infinity").replace(
            "nan", "NaN")
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def path_str(path):
    """deque(["data", 2, "tokens"]) -> "data[2].tokens"."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out = join(out, p)
    return out


def _order(root, e):
    """A sort key putting e where a reader of the schema meets it: fields in their order, a
    container's unknown keys before its fields, list items by index."""
    key, node, prev = [], root, None
    for step in e.relative_schema_path:
        if prev == "properties" and isinstance(node, dict):
            key.append(list(node).index(step) if step in node else len(node))
        elif step == "additionalProperties":
            key.append(-1)
        elif step == "required" and isinstance(node, dict):
            names = list(node.get("properties", {}))
            missing = [n for n in node.get("required", []) if n not in e.instance]
            key.append(names.index(missing[0]) if missing and missing[0] in names else 0)
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
        prev = step
    return (key, [p for p in e.absolute_path if isinstance(p, int)])


def first(errors, root):
    return min(errors, key=lambda e: _order(root, e)) if errors else None


def _describe(schema):
    """A short picture of what a schema takes: {text}, {tokens, weights?}, [{role, content}]."""
    if "anyOf" in schema:
        return " | ".join(_describe(a) for a in schema["anyOf"])
    types = schema.get("type")
    kind = types[0] if isinstance(types, list) else types
    if kind == "object":
        req = set(schema.get("required", []))
        return "{" + ", ".join(n if n in req else n + "?" for n in schema.get("properties",
                                                                              {})) + "}"
    if kind == "array":
        return "[" + _describe(schema.get("items", {})) + ", ...]"
    return _ARTICLE_TYPE.get(kind, "anything")


def _alternative(e):
    """For an anyOf error: the index of the alternative the value was evidently meant for
    (the only one of its JSON type, or the object whose fields it shares most), or None."""
    alts = e.validator_value
    kind = tname(e.instance)
    kinds = [a.get("type") for a in alts]
    fits = [i for i, k in enumerate(kinds)
            if k == kind or (isinstance(k, list) and kind in k)
            or (kind == "integer" and k == "number")]
    if kind == "object" and len(fits) > 1:
        shared = [(len(set(e.instance) & set(alts[i].get("properties", {}))), i) for i in fits]
        best = max(shared)[0]
        fits = [i for n, i in shared if n == best] if best else []
    return fits[0] if len(fits) == 1 else None


def message(e):
    """The client-facing text of jsonschema error e (field path + what was wrong)."""
    path = path_str(e.absolute_path)
    where = path or "body"
    k, v, x, schema = e.validator, e.validator_value, e.instance, e.schema
    if k == "anyOf":
        alt = _alternative(e)
        if alt is not None:
            inner = [c for c in e.context if c.relative_schema_path[0] == alt]
            if inner:
                return message(first(inner, v))
        got = tname(x)
        if isinstance(x, dict):
            got = "an object with " + (", ".join(repr(n) for n in list(x)[:8]) or "no fields")
        return f"{where}: expected {_describe(schema)}, got {got}"
    if k == "type":
        kinds = v if isinstance(v, list) else [v]
        want = " or ".join(_ARTICLE_TYPE.get(t, t) for t in kinds if t != "null")
        if schema.get("alsoString"):
            want += " or a string"
        return f"{where}: expected {want}, got {tname(x)}"
    if k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=",
              "exclusiveMaximum": "<"}[k]
        return f"{where}: must be {op} {v}, got {x}"
    if k == "minLength":
        if v == 1:
            return f"{where}: must not be empty"
        return f"{where}: shorter than the minimum of {v} characters ({len(x)})"
    if k == "maxLength":
        return f"{where}: longer than the limit of {v} characters ({len(x)})"
    if k == "minItems":
        return f"{where}: needs at least {v} item(s)"
    if k == "maxItems":
        return f"{where}: more than the limit of {v} items ({len(x)})"
    if k == "uniqueItems":
        seen = []
        dup = next((i for i in x if i in seen or seen.append(i)), None)
        return f"{where}: duplicate item {dup!r}"
    if k == "enum":
        choices = ", ".join(str(c) for c in v if c is not None)
        last = e.absolute_path[-1] if e.absolute_path else None
        if isinstance(last, int):
            # A list item: "target_modules[1]: unknown module 'zz'; must be one of ..."
            owner = next((p for p in reversed(e.absolute_path) if isinstance(p, str)), "item")
            noun = owner.rsplit("_", 1)[-1]
            noun = noun[:-1] if noun.endswith("s") else noun
            return f"{where}: unknown {noun} {x!r}; must be one of {choices}"
        return f"{where}: must be one of {choices}; got {x!r}"
    if k == "required":
        missing = next((n for n in v if n not in x), "?")
        doc = schema.get("properties", {}).get(missing, {}).get("description")
        if not doc:
            return f"{join(path, missing)}: required"
        return f"{join(path, missing)}: required " + (f"({doc})" if "(" not in doc else
                                                       f"-- {doc}")
    if k == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = sorted(n for n in x if n not in known)
        return (f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                f"allowed: {', '.join(known)}")
    if k == "pattern":
        return f"{where}: {schema.get('invalid') or 'does not match ' + v}"
    return f"{where}: {e.message}"
