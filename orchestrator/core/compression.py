"""Fewer bytes per update (`federated.compression`): a hospital sends its update (trained - global)
encoded, the server decodes it before any strategy sees it.

    float16   each float update as IEEE half precision (2 bytes a value)
    bfloat16  the upper 16 bits of each float32 value (2 bytes; float32's range, 8 bits of mantissa)
    int8      per tensor, symmetric: round(x / s) with s = max|x| / 127 (1 byte a value, 4 a tensor)
    topk      per tensor, the `fraction` largest |x|: their indices (int32) and values (float16)

Each method sends one array (one header, however many tensors the model has): the server knows the
model's tensors, their order and shapes, from the global model it sent.

With error feedback (the default for int8 and topk) what the encoding lost this round is added to
the next round's update at the same hospital (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD),
so nothing is lost for good, only late. Tensors that are not floating point (batch norm's step
count) travel as they are. Plain numpy: the hospital encodes, the server decodes, the same code.
"""
from __future__ import annotations

import numpy as np

METHODS = ("float16", "bfloat16", "int8", "topk")
SEP = "|"            # a part's name: update|f16, update|bf16, update|int8, update|topk, NAME|raw
PART = "update"      # every float tensor's values travel in one array per part, in the model's order


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def encode(delta: dict[str, np.ndarray], method: str, fraction: float = 0.1) -> dict[str, np.ndarray]:
    """The named arrays that travel for `delta`: its float tensors, in order, as one array per part
    (one header each, however many tensors the model has); other tensors raw."""
    out: dict[str, np.ndarray] = {}
    floats = []
    for name, x in delta.items():
        x = np.asarray(x)
        if _is_float(x):
            floats.append(x.reshape(-1).astype(np.float32))
        else:
            out[f"{name}{SEP}raw"] = x
    flat = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    if method == "float16":
        out[f"{PART}{SEP}f16"] = flat.astype(np.float16)
    elif method == "bfloat16":
        bits = flat.view(np.uint32)
        out[f"{PART}{SEP}bf16"] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)   # round to nearest even
    elif method == "int8":   # one byte array: the tensors' scales (float32), then every value's int8
        scales = np.array([float(np.abs(t).max()) / 127.0 if t.size else 0.0 for t in floats], np.float32)
        per_value = np.repeat(scales, [t.size for t in floats]) if floats else np.zeros(0, np.float32)
        safe = np.where(per_value > 0, per_value, 1.0)
        q = np.clip(np.rint(flat / safe), -127, 127).astype(np.int8)
        out[f"{PART}{SEP}int8"] = np.concatenate([scales.view(np.uint8), q.view(np.uint8)])
    elif method == "topk":   # per tensor, so that every layer moves; indices into the flat vector
        idx, offset = [], 0
        for t in floats:
            k = max(1, int(np.ceil(fraction * t.size))) if t.size else 0
            chosen = np.argpartition(np.abs(t), t.size - k)[t.size - k:] if k < t.size else np.arange(t.size)
            idx.append(np.sort(chosen) + offset)
            offset += t.size
        where = np.concatenate(idx).astype(np.int32) if idx else np.zeros(0, np.int32)
        # one byte array: the indices (int32), then their values (float16)
        out[f"{PART}{SEP}topk"] = np.concatenate([where.view(np.uint8), flat[where].astype(np.float16).view(np.uint8)])
    else:
        raise ValueError(f"unknown compression method {method!r} (one of {', '.join(METHODS)})")
    return out


def decode(sent: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The update `sent` encodes, each tensor shaped and typed as in `like` (the global model, in
    the order the hospital had it)."""
    floats = [(k, np.asarray(v)) for k, v in like.items() if _is_float(np.asarray(v))]
    total = sum(v.size for _, v in floats)
    if f"{PART}{SEP}f16" in sent:
        flat = np.asarray(sent[f"{PART}{SEP}f16"]).astype(np.float32)
    elif f"{PART}{SEP}bf16" in sent:
        flat = (np.asarray(sent[f"{PART}{SEP}bf16"]).astype(np.uint32) << 16).view(np.float32)
    elif f"{PART}{SEP}int8" in sent:
        raw = np.ascontiguousarray(sent[f"{PART}{SEP}int8"], np.uint8)
        if len(raw) != 4 * len(floats) + total:
            raise ValueError(f"the update holds {len(raw)} bytes, the model's {len(floats)} tensors of {total} "
                             "values need more or fewer: it was encoded for another model")
        scales = raw[:4 * len(floats)].view(np.float32)
        flat = raw[4 * len(floats):].view(np.int8).astype(np.float32) * np.repeat(scales, [v.size for _, v in floats])
    elif f"{PART}{SEP}topk" in sent:
        raw = np.ascontiguousarray(sent[f"{PART}{SEP}topk"], np.uint8)
        k = len(raw) // 6
        flat = np.zeros(total, np.float32)
        flat[raw[:4 * k].view(np.int32)] = raw[4 * k:].view(np.float16).astype(np.float32)
    elif floats:
        raise KeyError("the update holds no encoded values: it was not encoded for this model")
    else:
        flat = np.zeros(0, np.float32)
    if flat.size != total:
        raise ValueError(f"the update holds {flat.size} values, the model {total}: it was encoded for another model")
    out: dict[str, np.ndarray] = {}
    at = 0
    for name, ref in like.items():
        ref = np.asarray(ref)
        if _is_float(ref):
            out[name] = flat[at:at + ref.size].astype(ref.dtype).reshape(ref.shape)
            at += ref.size
        else:
            out[name] = np.asarray(sent[f"{name}{SEP}raw"]).reshape(ref.shape)
    return out


def is_encoded(names) -> bool:
    return any(SEP in str(n) for n in names)


def compress_update(start: dict[str, np.ndarray], trained: dict[str, np.ndarray], method: str, fraction: float,
                    residual: dict[str, np.ndarray] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(what travels, the residual to keep) for a hospital's trained weights: the update plus last
    round's residual (error feedback; `residual` None: none kept), encoded."""
    delta = {}
    for name, w in trained.items():
        w = np.asarray(w)
        delta[name] = (w.astype(np.float32) - np.asarray(start[name], np.float32)) if _is_float(w) else w
        if residual is not None and name in residual and _is_float(w):
            delta[name] = delta[name] + residual[name]
    sent = encode(delta, method, fraction)
    if residual is None:
        return sent, None
    got = decode(sent, {k: np.asarray(v, np.float32) if _is_float(np.asarray(v)) else np.asarray(v)
                        for k, v in trained.items()})
    return sent, {k: (delta[k] - got[k]).astype(np.float32) for k in delta if _is_float(np.asarray(trained[k]))}


def decompress_update(sent: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The hospital's weights the server aggregates: the global model it sent plus the decoded update."""
    got = decode(sent, start)
    return {k: (np.asarray(start[k]) + got[k]).astype(np.asarray(start[k]).dtype) if _is_float(np.asarray(start[k]))
            else got[k] for k in start}
