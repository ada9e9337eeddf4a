"""ctypes bindings to libblockq.so: the library is found, loaded once, and every
function used here is given its C signature (include/blockq.h)."""
import ctypes
import os

c_float_p = ctypes.POINTER(ctypes.c_float)
c_uint8_p = ctypes.POINTER(ctypes.c_uint8)
c_int32_p = ctypes.POINTER(ctypes.c_int32)


class FormatInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("family", ctypes.c_char_p), ("bits_per_element", ctypes.c_double),
                ("elem_bits", ctypes.c_int), ("scale_bits", ctypes.c_int), ("block", ctypes.c_int),
                ("max_normal", ctypes.c_double), ("min_normal", ctypes.c_double), ("min_subnormal", ctypes.c_double),
                ("range_binades", ctypes.c_double), ("block_binades", ctypes.c_double)]


class QOpts(ctypes.Structure):
    _fields_ = [("round", ctypes.c_int), ("seed", ctypes.c_uint64), ("threads", ctypes.c_int)]


PROGRESS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_double)
ON_TOKEN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32)


class PplOpts(ctypes.Structure):
    _fields_ = [("ctx", ctypes.c_int), ("chunks", ctypes.c_int), ("second_half", ctypes.c_int),
                ("allow_nonfinite", ctypes.c_int), ("threads", ctypes.c_int), ("progress", PROGRESS),
                ("progress_arg", ctypes.c_void_p), ("device", ctypes.c_int), ("stages", ctypes.c_int)]


class PplResult(ctypes.Structure):
    _fields_ = [("ppl", ctypes.c_double), ("nll", ctypes.c_double), ("seconds", ctypes.c_double),
                ("ppl_all", ctypes.c_double), ("ppl_second_half", ctypes.c_double), ("windows", ctypes.c_size_t),
                ("tokens_scored", ctypes.c_size_t)]


class GenOpts(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("n_new", ctypes.c_int), ("temperature", ctypes.c_double),
                ("top_p", ctypes.c_double), ("seed", ctypes.c_uint64), ("allow_nonfinite", ctypes.c_int),
                ("on_token", ON_TOKEN), ("arg", ctypes.c_void_p), ("device", ctypes.c_int), ("eager", ctypes.c_int),
                ("stages", ctypes.c_int)]


class GenResult(ctypes.Structure):
    _fields_ = [("prompt_seconds", ctypes.c_double), ("gen_seconds", ctypes.c_double),
                ("prompt_tokens", ctypes.c_size_t), ("gen_tokens", ctypes.c_size_t)]


def _candidates():
    env = os.environ.get("BLOCKQ_LIB")
    if env:
        yield env
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libblockq.so")                        # installed beside the package
    yield os.path.join(here, "..", "..", "build", "libblockq.so")   # a source checkout after `make`
    yield "libblockq.so"                                             # the loader's search path


def _load():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("blockq: libblockq.so not found (run `make` in the repository, or set BLOCKQ_LIB); tried: "
                      + "; ".join(errors or ["BLOCKQ_LIB, the package folder, ../../build"]))


lib = _load()

_SIGS = {
    "bq_version": (ctypes.c_char_p, []),
    "bq_last_error": (ctypes.c_char_p, []),
    "bq_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "bq_format_parse": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
    "bq_format_free": (None, [ctypes.c_void_p]),
    "bq_format_get_info": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(FormatInfo)]),
    "bq_format_list": (ctypes.c_char_p, [ctypes.c_size_t]),
    "bq_qdq": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                              ctypes.POINTER(QOpts)]),
    "bq_packed_size": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    "bq_pack": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(QOpts),
                               ctypes.c_void_p, ctypes.c_size_t]),
    "bq_unpack": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.c_void_p]),
    "bq_model_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
    "bq_model_free": (None, [ctypes.c_void_p]),
    "bq_model_vocab": (ctypes.c_int, [ctypes.c_void_p]),
    "bq_model_save": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bq_model_save_gguf": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bq_model_logits": (ctypes.c_int, [ctypes.c_void_p, c_int32_p, ctypes.c_int, ctypes.c_void_p]),
    "bq_model_quantize": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
    "bq_model_pack": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
    "bq_qconfig_new": (ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p)]),
    "bq_qconfig_free": (None, [ctypes.c_void_p]),
    "bq_qconfig_set": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]),
    "bq_qconfig_set_round": (None, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]),
    "bq_qconfig_add_rule": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]),
    "bq_qconfig_load": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bq_tokenizer_from_model": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
    "bq_tokenizer_free": (None, [ctypes.c_void_p]),
    "bq_tokenize": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(c_int32_p),
                                   ctypes.POINTER(ctypes.c_size_t)]),
    "bq_detokenize": (ctypes.c_int, [ctypes.c_void_p, c_int32_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_size_t)]),
    "bq_perplexity": (ctypes.c_int, [ctypes.c_void_p, c_int32_p, ctypes.c_size_t, ctypes.POINTER(PplOpts),
                                     ctypes.POINTER(PplResult)]),
    "bq_generate": (ctypes.c_int, [ctypes.c_void_p, c_int32_p, ctypes.c_size_t, ctypes.POINTER(GenOpts), c_int32_p,
                                   ctypes.POINTER(GenResult)]),
    "bq_set_threads": (None, [ctypes.c_int]),
    "bq_qdq_device": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                     ctypes.POINTER(QOpts)]),
    "bq_device_count": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t]),
}
for _name, (_res, _args) in _SIGS.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args

libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
libc.free.restype = None
