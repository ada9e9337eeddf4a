"""blockq from Python: block-based number formats (MX, NVFP4, BFP, block minifloat,
block log, integer, minifloat) for numpy arrays and PyTorch tensors, and Hugging
Face / .bq / GGUF models scored and run, all through libblockq.so.

    import numpy as np, blockq
    y = blockq.qdq(np.random.randn(4, 64).astype(np.float32), "mxfp4")
    m = blockq.Model("models/llama-19m-en", config={"wq": "bfp6_b16", "aq": "bfp6_b16"})
    m.perplexity(open("data/wikitext-2-test.txt").read(), ctx=512, chunks=10)
"""
import ctypes
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import _lib
from ._lib import lib

__all__ = ["Error", "ConversionWarning", "version", "formats", "qdq", "pack", "unpack", "packed_size", "cuda_available", "Model"]

ROUNDING = {"rne": 0, "away": 1, "zero": 2, "stochastic": 3}


class Error(Exception):
    """A libblockq failure: .status is the library's status name, the message its text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.code = status
        self.status = lib.bq_status_name(status).decode()


class ConversionWarning(UserWarning):
    """An input was converted (to contiguous float32) before the library saw it."""


def _check(status: int) -> None:
    if status:
        raise Error(status, lib.bq_last_error().decode("utf-8", "replace"))


def version() -> str:
    """The loaded libblockq.so's version."""
    return lib.bq_version().decode()


class _Format:
    """An owned bq_format handle."""

    def __init__(self, name: str):
        self.ptr = ctypes.c_void_p()
        _check(lib.bq_format_parse(name.encode(), ctypes.byref(self.ptr)))
        self.name = name

    def __del__(self):
        if getattr(self, "ptr", None) and self.ptr.value:
            lib.bq_format_free(self.ptr)


_formats_cache: Dict[str, _Format] = {}


def _fmt(name: str) -> _Format:
    f = _formats_cache.get(name)
    if f is None:
        f = _formats_cache[name] = _Format(name)
    return f


def formats() -> List[dict]:
    """Every named format: name, family, bits per element (scales included), element
    and scale bits, block (0 none, -1 per row, -2 per tensor) and range."""
    out, i = [], 0
    while True:
        name = lib.bq_format_list(i)
        if not name:
            return out
        info = _lib.FormatInfo()
        _check(lib.bq_format_get_info(_fmt(name.decode()).ptr, ctypes.byref(info)))
        out.append({"name": name.decode(), "family": info.family.decode(), "bits_per_element": info.bits_per_element,
                    "elem_bits": info.elem_bits, "scale_bits": info.scale_bits, "block": info.block,
                    "max_normal": info.max_normal, "min_normal": info.min_normal,
                    "min_subnormal": info.min_subnormal, "range_binades": info.range_binades})
        i += 1


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _as_rows(x, axis: int):
    """x (numpy or torch) -> (C-contiguous float32 numpy [rows, cols] with the block
    axis last, how to restore the caller's layout). No copy when x is already a
    contiguous float32 array blocked along its last axis."""
    torch = _torch()
    is_torch = torch is not None and isinstance(x, torch.Tensor)
    device = None
    if is_torch:
        device = x.device
        if x.requires_grad:
            x = x.detach()
        if device.type != "cpu":
            warnings.warn(f"blockq: a {device.type} tensor is copied to the CPU and back (libblockq.so has no CUDA device)",
                          ConversionWarning, stacklevel=3)
            x = x.cpu()
        arr = x.numpy()
    else:
        arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError("blockq: a scalar has no block axis")
    axis = axis % arr.ndim
    if arr.dtype != np.float32:
        warnings.warn(f"blockq: {arr.dtype} input converted to float32", ConversionWarning, stacklevel=3)
        arr = arr.astype(np.float32)
    moved = np.moveaxis(arr, axis, -1)
    if not moved.flags.c_contiguous:
        moved = np.ascontiguousarray(moved)  # the one copy a transposed layout needs
    cols = moved.shape[-1]
    rows = moved.size // cols if cols else 0
    return moved.reshape(rows, cols), moved.shape, axis, is_torch, device


def _restore(out2d: np.ndarray, moved_shape, axis, is_torch, device):
    out = np.moveaxis(out2d.reshape(moved_shape), -1, axis)
    if is_torch:
        torch = _torch()
        t = torch.from_numpy(np.ascontiguousarray(out) if not out.flags.c_contiguous else out)
        return t.to(device) if device is not None and device.type != "cpu" else t
    return out


def _qopts(round: str, seed: Optional[int]) -> _lib.QOpts:
    if round not in ROUNDING:
        raise ValueError(f"blockq: round must be one of {sorted(ROUNDING)}, not {round!r}")
    return _lib.QOpts(ROUNDING[round], 0 if seed is None else int(seed), 0)


def cuda_available() -> bool:
    """Whether libblockq.so was built with CUDA and sees a device."""
    return lib.bq_device_count(None, 0) > 0


def _qdq_cuda(x, fmt, axis, round, seed):
    """A CUDA tensor quantised on its device by the CUDA backend: no host copy."""
    torch = _torch()
    moved = torch.movedim(x.detach(), axis, -1).contiguous()
    if moved.dtype != torch.float32:
        warnings.warn(f"blockq: {moved.dtype} input converted to float32", ConversionWarning, stacklevel=3)
        moved = moved.float()
    out = torch.empty_like(moved)
    cols = moved.shape[-1]
    with torch.cuda.device(moved.device):
        torch.cuda.synchronize()  # the backend runs on CUDA's default stream
        o = _qopts(round, seed)
        _check(lib.bq_qdq_device(_fmt(fmt).ptr, moved.data_ptr(), out.data_ptr(), moved.numel() // max(cols, 1), cols,
                                 ctypes.byref(o)))
    return torch.movedim(out, -1, axis)


def qdq(x, fmt: str, axis: int = -1, round: str = "rne", seed: Optional[int] = None, out: Optional[np.ndarray] = None):
    """Fake-quantise x to the format `fmt` (quantise, then dequantise to float32),
    blocks running along `axis`. Returns the same type as x (numpy array or torch
    tensor). Bit-identical to `blockq qdq` and the C library.

    out: a C-contiguous float32 numpy array of x's shape to write into (x itself
    for in place); only with axis=-1 numpy input, so no copy is made anywhere."""
    if out is not None:
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
                and isinstance(x, np.ndarray) and x.shape == out.shape and axis % max(x.ndim, 1) == x.ndim - 1):
            raise ValueError("blockq: out must be a C-contiguous float32 array of x's shape, with axis=-1 numpy input")
    torch = _torch()
    if out is None and torch is not None and isinstance(x, torch.Tensor) and x.is_cuda and cuda_available():
        return _qdq_cuda(x, fmt, axis % max(x.dim(), 1), round, seed)
    rows2d, shape, ax, is_torch, dev = _as_rows(x, axis)
    res = out.reshape(rows2d.shape) if out is not None else np.empty_like(rows2d)
    o = _qopts(round, seed)
    _check(lib.bq_qdq(_fmt(fmt).ptr, rows2d.ctypes.data, res.ctypes.data, rows2d.shape[0], rows2d.shape[1], ctypes.byref(o)))
    return out if out is not None else _restore(res, shape, ax, is_torch, dev)


def packed_size(fmt: str, rows: int, cols: int) -> int:
    """Exact bytes of a [rows, cols] tensor packed in `fmt` (docs/formats.md)."""
    return lib.bq_packed_size(_fmt(fmt).ptr, rows, cols)


def pack(x, fmt: str, axis: int = -1, round: str = "rne", seed: Optional[int] = None) -> np.ndarray:
    """The packed codes of x (blocks along `axis`) as a uint8 array: the true bit
    layout of docs/formats.md, rows of the moved-axis [rows, cols] view in order."""
    rows2d, _, _, _, _ = _as_rows(x, axis)
    n = lib.bq_packed_size(_fmt(fmt).ptr, rows2d.shape[0], rows2d.shape[1])
    out = np.empty(max(n, 1), dtype=np.uint8)
    o = _qopts(round, seed)
    _check(lib.bq_pack(_fmt(fmt).ptr, rows2d.ctypes.data, rows2d.shape[0], rows2d.shape[1], ctypes.byref(o),
                       out.ctypes.data, n))
    return out[:n]


def unpack(data, fmt: str, shape: Sequence[int], axis: int = -1) -> np.ndarray:
    """Float32 values of packed codes: the inverse of pack() for a tensor of `shape`
    blocked along `axis` (unpack(pack(x)) == qdq(x), bit for bit)."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("blockq: unpack needs a shape")
    axis = axis % len(shape)
    moved = list(shape)
    moved.append(moved.pop(axis))
    cols = moved[-1]
    rows = int(np.prod(moved[:-1])) if len(moved) > 1 else 1
    buf = np.ascontiguousarray(np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data,
                               dtype=np.uint8)
    out = np.empty((rows, cols), dtype=np.float32)
    _check(lib.bq_unpack(_fmt(fmt).ptr, buf.ctypes.data, buf.size, rows, cols, out.ctypes.data))
    return np.moveaxis(out.reshape(moved), -1, axis)


_ROLES = ("wq", "aq", "attn", "kv", "head", "emb")


class Model:
    """A Hugging Face folder, .bq or GGUF model, optionally quantised.

    config: None, a path to a TOML configuration (docs/quantisation.md), or a dict
    with any of wq, aq, attn, kv, head, emb (format names), round, seed, packed
    (hold weights packed, as a .bq file would), strict, and rules (a list of
    (glob, weight format, input format) tuples)."""

    def __init__(self, path: str, device: str = "cpu", config: Union[None, str, dict] = None):
        if device not in ("cpu", "cuda"):
            raise ValueError("blockq: device must be 'cpu' or 'cuda'")
        self.path, self.device = path, device
        self._m = ctypes.c_void_p()
        self._t = None
        _check(lib.bq_model_load(path.encode(), ctypes.byref(self._m)))
        if config is not None:
            self.quantize(config)

    def __del__(self):
        if getattr(self, "_t", None):
            lib.bq_tokenizer_free(self._t)
        if getattr(self, "_m", None) and self._m.value:
            lib.bq_model_free(self._m)

    @property
    def vocab(self) -> int:
        return lib.bq_model_vocab(self._m)

    def quantize(self, config: Union[str, dict]) -> "Model":
        """Apply a quantisation configuration in place; returns self (so .save can follow)."""
        q = ctypes.c_void_p()
        _check(lib.bq_qconfig_new(ctypes.byref(q)))
        try:
            packed, strict = False, False
            if isinstance(config, str):
                _check(lib.bq_qconfig_load(q, config.encode()))
            else:
                unknown = set(config) - set(_ROLES) - {"round", "seed", "packed", "strict", "rules"}
                if unknown:
                    raise ValueError(f"blockq: unknown config keys {sorted(unknown)}")
                for role in _ROLES:
                    if config.get(role):
                        _check(lib.bq_qconfig_set(q, role.encode(), config[role].encode()))
                if "round" in config or "seed" in config:
                    lib.bq_qconfig_set_round(q, ROUNDING[config.get("round", "rne")], int(config.get("seed", 0)))
                for pat, w, a in config.get("rules", []):
                    _check(lib.bq_qconfig_add_rule(q, pat.encode(), (w or "").encode(), (a or "").encode()))
                packed, strict = bool(config.get("packed")), bool(config.get("strict"))
            _check((lib.bq_model_pack if packed else lib.bq_model_quantize)(self._m, q, int(strict)))
        finally:
            lib.bq_qconfig_free(q)
        return self

    def save(self, path: str) -> None:
        """Write the model as .bq, or GGUF when the path ends in .gguf (atomically)."""
        save = lib.bq_model_save_gguf if path.endswith(".gguf") else lib.bq_model_save
        _check(save(self._m, path.encode()))

    def _tokenizer(self):
        if self._t is None:
            t = ctypes.c_void_p()
            _check(lib.bq_tokenizer_from_model(self._m, ctypes.byref(t)))
            self._t = t
        return self._t

    def tokenize(self, text: str) -> np.ndarray:
        """Token ids (int32) of a text, as `blockq tokenize`."""
        raw = text.encode("utf-8")
        ids, n = _lib.c_int32_p(), ctypes.c_size_t()
        _check(lib.bq_tokenize(self._tokenizer(), raw, len(raw), ctypes.byref(ids), ctypes.byref(n)))
        try:
            return np.ctypeslib.as_array(ids, shape=(n.value,)).copy() if n.value else np.zeros(0, np.int32)
        finally:
            _lib.libc.free(ids)

    def detokenize(self, ids) -> str:
        arr = np.ascontiguousarray(ids, dtype=np.int32)
        s, n = ctypes.c_void_p(), ctypes.c_size_t()
        _check(lib.bq_detokenize(self._tokenizer(), arr.ctypes.data_as(_lib.c_int32_p), arr.size, ctypes.byref(s),
                                 ctypes.byref(n)))
        try:
            return ctypes.string_at(s, n.value).decode("utf-8", "replace")
        finally:
            _lib.libc.free(s)

    def logits(self, ids) -> np.ndarray:
        """Float32 logits [n, vocab] for token ids from an empty cache."""
        arr = np.ascontiguousarray(ids, dtype=np.int32)
        out = np.empty((arr.size, self.vocab), dtype=np.float32)
        _check(lib.bq_model_logits(self._m, arr.ctypes.data_as(_lib.c_int32_p), arr.size, out.ctypes.data))
        return out

    def perplexity(self, text: Union[str, Sequence[int]], ctx: int = 512, chunks: int = 0,
                   protocol: str = "all", threads: int = 0, stages: int = 1) -> dict:
        """Perplexity over non-overlapping windows, as `blockq ppl` (same numbers); stages:
        pipeline stages the layers are split into (`--stages`, the same numbers)."""
        if protocol not in ("all", "second-half"):
            raise ValueError("blockq: protocol is 'all' or 'second-half'")
        ids = self.tokenize(text) if isinstance(text, str) else np.ascontiguousarray(text, dtype=np.int32)
        o = _lib.PplOpts(ctx, chunks, int(protocol == "second-half"), 0, threads, _lib.PROGRESS(), None,
                         int(self.device == "cuda"), stages)
        r = _lib.PplResult()
        _check(lib.bq_perplexity(self._m, ids.ctypes.data_as(_lib.c_int32_p), ids.size, ctypes.byref(o), ctypes.byref(r)))
        return {"ppl": r.ppl, "nll": r.nll, "windows": r.windows, "tokens_scored": r.tokens_scored,
                "seconds": r.seconds, "ppl_all": r.ppl_all, "ppl_second_half": r.ppl_second_half}

    def generate(self, prompt: Union[str, Sequence[int]], n: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, device: str = "cpu", stages: int = 1) -> dict:
        """Continue a prompt by n tokens (greedy at temperature 0), as `blockq generate`:
        the same ids for the same seed, on the CPU or ("cuda") the GPU, the layers in
        `stages` pipeline stages (`--stages`, the same ids). Returns ids, text and timings."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        ids = self.tokenize(prompt) if isinstance(prompt, str) else np.ascontiguousarray(prompt, dtype=np.int32)
        out = np.zeros(max(n, 1), dtype=np.int32)
        o = _lib.GenOpts(ctypes.sizeof(_lib.GenOpts), n, temperature, top_p, seed, 0, _lib.ON_TOKEN(), None,
                         1 if device == "cuda" else 0, 0, stages)
        r = _lib.GenResult()
        _check(lib.bq_generate(self._m, ids.ctypes.data_as(_lib.c_int32_p), ids.size, ctypes.byref(o),
                               out.ctypes.data_as(_lib.c_int32_p), ctypes.byref(r)))
        new = out[:n].copy()
        return {"ids": new, "text": self.detokenize(new) if n else "", "prompt_tokens": r.prompt_tokens,
                "prompt_seconds": r.prompt_seconds, "gen_tokens": r.gen_tokens, "gen_seconds": r.gen_seconds}
