"""validation.py -- request bodies checked and turned into task keyword arguments.

Each validate_* takes the parsed JSON body and the app config and returns exactly the kwargs of
the worker task (names from the task contract), or raises a 400 ApiError whose message names
the field and what was wrong ("data[2].tokens: expected a list of integers"). Sizes are bounded
by config (CELERIAC_MAX_*) before anything is sent. Unknown fields are refused so typos do not
pass silently; the seed's spellings (model_id, request_id, base_model) are accepted as aliases.
The worker checks again (vocabulary, model limits); its ValueError/TypeError come back as 400s
through the future.
"""

import json
import math

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import bad_request
from .ownership import FUTURE_RX, ID_RX

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOSS_FNS = ("cross_entropy",)
ROLES = ("system", "user", "assistant")
ADAM_KEYS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay")
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
MAX_STOPS = 16
MAX_STOP_CHARS = 256
INT_MAX = 2**63 - 1


def read_body():
    """The raw request body, at most MAX_CONTENT_LENGTH bytes, else 413. Read here rather
    than by werkzeug because werkzeug 2.2 does not limit chunked bodies (no Content-Length)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    stream = request.stream
    parts, size = [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(parts)


def json_body():
    """The request's JSON object; 400 unless the body is a JSON object."""
    raw = read_body()
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, not {_tname(data)}")
    return data


def _tname(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _only(body, allowed, where="body"):
    extra = sorted(k for k in body if k not in allowed)
    if extra:
        raise bad_request(f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                          f"allowed: {', '.join(allowed)}")


def _alias(body, name, alias):
    """Moves body[alias] to body[name] (the seed's spelling); both given -> 400."""
    if alias in body:
        if name in body:
            raise bad_request(f"give either {name!r} or {alias!r}, not both")
        body[name] = body.pop(alias)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and abs(v) < 1e300)


def want_int(v, where, lo=None, hi=None):
    if not is_int(v):
        raise bad_request(f"{where}: expected an integer, got {_tname(v)}")
    if lo is not None and v < lo:
        raise bad_request(f"{where}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise bad_request(f"{where}: must be <= {hi}, got {v}")
    return v


def want_num(v, where, lo=None, hi=None, lo_open=False, hi_open=False):
    if not is_num(v):
        raise bad_request(f"{where}: expected a finite number, got {_tname(v)}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise bad_request(f"{where}: must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise bad_request(f"{where}: must be {'<' if hi_open else '<='} {hi}, got {v}")
    return float(v) if isinstance(v, float) else v


def want_str(v, where, max_chars, allow_empty=False):
    if not isinstance(v, str):
        raise bad_request(f"{where}: expected a string, got {_tname(v)}")
    if not v and not allow_empty:
        raise bad_request(f"{where}: must not be empty")
    if len(v) > max_chars:
        raise bad_request(f"{where}: longer than the limit of {max_chars} characters "
                          f"({len(v)})")
    return v


def want_list(v, where, max_items, min_items=1):
    if not isinstance(v, list):
        raise bad_request(f"{where}: expected an array, got {_tname(v)}")
    if len(v) < min_items:
        raise bad_request(f"{where}: needs at least {min_items} item(s)")
    if len(v) > max_items:
        raise bad_request(f"{where}: more than the limit of {max_items} items ({len(v)})")
    return v


def adapter_id(body, cfg, required=True, nullable=False):
    _alias(body, "adapter_id", "model_id")
    if "adapter_id" not in body:
        if required:
            raise bad_request("adapter_id: required")
        return None
    v = body["adapter_id"]
    if v is None and nullable:
        return None
    return check_adapter_id(v)


def check_adapter_id(v, where="adapter_id"):
    if not isinstance(v, str):
        raise bad_request(f"{where}: expected a string, got {_tname(v)}")
    if not ID_RX.match(v):
        raise bad_request(f"{where}: not a valid adapter id (letters, digits, '_.:-', "
                          f"at most 128 characters)")
    return v


def validate_future(body, cfg):
    _alias(body, "future_id", "request_id")
    _only(body, ("future_id",))
    if "future_id" not in body:
        raise bad_request("future_id: required")
    v = body["future_id"]
    if not isinstance(v, str):
        raise bad_request(f"future_id: expected a string, got {_tname(v)}")
    if not FUTURE_RX.match(v):
        raise bad_request("future_id: not a valid future id")
    return v


def validate_add_lora(body, cfg):
    """-> kwargs of lora.create (owner is added by the route)."""
    _only(body, ("rank", "alpha", "target_modules", "seed", "base_model"))
    kw = {}
    if "base_model" in body and body["base_model"] is not None:
        # The seed's clients send base_model; one base model is served, so any name is ignored.
        want_str(body["base_model"], "base_model", 256)
    if body.get("rank") is not None:
        kw["rank"] = want_int(body["rank"], "rank", 1, cfg["CELERIAC_MAX_RANK"])
    if body.get("alpha") is not None:
        kw["alpha"] = want_num(body["alpha"], "alpha", 0, 1e6, lo_open=True)
    if body.get("target_modules") is not None:
        mods = want_list(body["target_modules"], "target_modules", len(LORA_TARGETS))
        for i, m in enumerate(mods):
            want_str(m, f"target_modules[{i}]", 64)
            if m not in LORA_TARGETS:
                raise bad_request(f"target_modules[{i}]: unknown module {m!r}; "
                                  f"known: {', '.join(LORA_TARGETS)}")
        if len(set(mods)) != len(mods):
            raise bad_request("target_modules: duplicate module names")
        kw["target_modules"] = list(mods)
    if body.get("seed") is not None:
        kw["seed"] = want_int(body["seed"], "seed", 0, INT_MAX)
    return kw


def _example(ex, where, cfg):
    max_chars = cfg["CELERIAC_MAX_TEXT_CHARS"]
    if isinstance(ex, list):  # a chat
        want_list(ex, where, 256)
        total = 0
        for j, msg in enumerate(ex):
            w = f"{where}[{j}]"
            if not isinstance(msg, dict):
                raise bad_request(f"{w}: expected a message object {{role, content}}, "
                                  f"got {_tname(msg)}")
            _only(msg, ("role", "content"), w)
            if "role" not in msg:
                raise bad_request(f"{w}.role: required")
            if "content" not in msg:
                raise bad_request(f"{w}.content: required")
            if not isinstance(msg["role"], str) or msg["role"] not in ROLES:
                raise bad_request(f"{w}.role: must be one of {', '.join(ROLES)}")
            total += len(want_str(msg["content"], f"{w}.content", max_chars, allow_empty=True))
        if total > max_chars:
            raise bad_request(f"{where}: chat longer than the limit of {max_chars} characters")
        if not any(m["role"] == "assistant" for m in ex):
            raise bad_request(f"{where}: a chat needs at least one assistant message "
                              f"(the loss is on assistant turns)")
        return ex
    if not isinstance(ex, dict):
        raise bad_request(f"{where}: expected {{\"text\"}}, a chat array or "
                          f"{{\"tokens\", \"target_tokens\", \"weights\"}}, got {_tname(ex)}")
    if "text" in ex:
        _only(ex, ("text",), where)
        want_str(ex["text"], f"{where}.text", max_chars)
        return ex
    if "tokens" in ex:
        _only(ex, ("tokens", "target_tokens", "weights"), where)
        max_tokens = cfg["CELERIAC_MAX_TOKENS"]
        toks = want_list(ex["tokens"], f"{where}.tokens", max_tokens)
        for k in ("target_tokens", "weights"):
            if k not in ex:
                raise bad_request(f"{where}.{k}: required with tokens")
        tgts = want_list(ex["target_tokens"], f"{where}.target_tokens", max_tokens)
        wts = want_list(ex["weights"], f"{where}.weights", max_tokens)
        if not (len(toks) == len(tgts) == len(wts)):
            raise bad_request(f"{where}: tokens, target_tokens and weights must have the same "
                              f"length ({len(toks)}, {len(tgts)}, {len(wts)})")
        for name, seq in (("tokens", toks), ("target_tokens", tgts)):
            for i, t in enumerate(seq):
                if not is_int(t) or t < 0 or t > 2**31 - 1:
                    raise bad_request(f"{where}.{name}[{i}]: expected a token id "
                                      f"(integer >= 0), got {t!r:.40}")
        for i, w in enumerate(wts):
            if not is_num(w) or w < 0:
                raise bad_request(f"{where}.weights[{i}]: expected a finite number >= 0")
        return ex
    raise bad_request(f"{where}: an example needs 'text', or 'tokens' with 'target_tokens' "
                      f"and 'weights', or is a chat array of {{role, content}}")


def validate_fwdbwd(body, cfg):
    """-> kwargs of lora.forward_backward."""
    aid = adapter_id(body, cfg)
    _only(body, ("adapter_id", "data", "loss_fn"))
    if "data" not in body:
        raise bad_request("data: required (an array of examples)")
    data = want_list(body["data"], "data", cfg["CELERIAC_MAX_EXAMPLES"])
    for i, ex in enumerate(data):
        _example(ex, f"data[{i}]", cfg)
    kw = {"adapter_id": aid, "data": data}
    if body.get("loss_fn") is not None:
        fn = body["loss_fn"]
        if not isinstance(fn, str) or fn not in LOSS_FNS:
            raise bad_request(f"loss_fn: must be one of {', '.join(LOSS_FNS)}")
        kw["loss_fn"] = fn
    return kw


def validate_optim_step(body, cfg):
    """-> kwargs of lora.optim_step."""
    aid = adapter_id(body, cfg)
    _only(body, ("adapter_id", "adam_params"))
    kw = {"adapter_id": aid}
    p = body.get("adam_params")
    if p is not None:
        if not isinstance(p, dict):
            raise bad_request(f"adam_params: expected an object, got {_tname(p)}")
        _only(p, ADAM_KEYS, "adam_params")
        out = {}
        if p.get("learning_rate") is not None:
            out["learning_rate"] = want_num(p["learning_rate"], "adam_params.learning_rate",
                                            0, 10, lo_open=True)
        for k in ("beta1", "beta2"):
            if p.get(k) is not None:
                out[k] = want_num(p[k], f"adam_params.{k}", 0, 1, hi_open=True)
        if p.get("eps") is not None:
            out["eps"] = want_num(p["eps"], "adam_params.eps", 0, 1, lo_open=True)
        if p.get("weight_decay") is not None:
            out["weight_decay"] = want_num(p["weight_decay"], "adam_params.weight_decay", 0, 10)
        kw["adam_params"] = out
    return kw


def validate_sample(body, cfg):
    """-> kwargs of lora.sample (adapter_id None = the base model)."""
    aid = adapter_id(body, cfg, required=False, nullable=True)
    _only(body, ("adapter_id", "prompts", "sampling_params"))
    if "prompts" not in body:
        raise bad_request("prompts: required (an array of strings)")
    prompts = want_list(body["prompts"], "prompts", cfg["CELERIAC_MAX_PROMPTS"])
    for i, pr in enumerate(prompts):
        want_str(pr, f"prompts[{i}]", cfg["CELERIAC_MAX_TEXT_CHARS"], allow_empty=True)
    kw = {"adapter_id": aid, "prompts": prompts}
    sp = body.get("sampling_params")
    if sp is not None:
        if not isinstance(sp, dict):
            raise bad_request(f"sampling_params: expected an object, got {_tname(sp)}")
        _only(sp, SAMPLING_KEYS, "sampling_params")
        out = {}
        if sp.get("max_tokens") is not None:
            out["max_tokens"] = want_int(sp["max_tokens"], "sampling_params.max_tokens", 1,
                                         cfg["CELERIAC_MAX_SAMPLE_TOKENS"])
        if sp.get("temperature") is not None:
            out["temperature"] = want_num(sp["temperature"], "sampling_params.temperature",
                                          0, 100)
        if sp.get("top_p") is not None:
            out["top_p"] = want_num(sp["top_p"], "sampling_params.top_p", 0, 1, lo_open=True)
        if sp.get("top_k") is not None:
            out["top_k"] = want_int(sp["top_k"], "sampling_params.top_k", 0, 1 << 20)
        if sp.get("seed") is not None:
            out["seed"] = want_int(sp["seed"], "sampling_params.seed", 0, INT_MAX)
        if sp.get("stop") is not None:
            stop = sp["stop"]
            if isinstance(stop, str):
                stop = [stop]
            want_list(stop, "sampling_params.stop", MAX_STOPS)
            for i, s in enumerate(stop):
                want_str(s, f"sampling_params.stop[{i}]", MAX_STOP_CHARS)
            out["stop"] = stop
        kw["sampling_params"] = out
    return kw


def validate_score(body, cfg):
    """-> kwargs of model.score."""
    aid = adapter_id(body, cfg, required=False, nullable=True)
    _only(body, ("text", "adapter_id"))
    if "text" not in body:
        raise bad_request("text: required")
    text = want_str(body["text"], "text", cfg["CELERIAC_MAX_TEXT_CHARS"])
    return {"text": text, "adapter_id": aid}
