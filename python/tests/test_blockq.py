"""The Python package against the C library and the CLI: reference vectors bit for
bit, the CLI's own outputs, a torch round trip, and a model's perplexity and
generation equal to `blockq ppl` / `blockq generate`. Run from the repository root
after `make`: /usr/bin/python3 -m pytest python/tests."""
import json
import os
import subprocess
import tempfile
import warnings

import numpy as np
import pytest

import blockq

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.path.join(ROOT, os.environ.get("BUILD", "build"), "blockq")
MODEL = os.path.join(ROOT, "models", "llama-19m-en")
TEXT = os.path.join(ROOT, "data", "wikitext-2-test.txt")


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and bool(np.all((bits(a) == bits(b)) | (np.isnan(a) & np.isnan(b))))


def test_version_and_formats():
    assert blockq.version().count(".") == 2
    fs = {f["name"]: f for f in blockq.formats()}
    assert len(fs) >= 40
    assert fs["mxfp4"]["bits_per_element"] == 4.25 and fs["mxfp4"]["block"] == 32 and fs["mxfp4"]["elem_bits"] == 4
    assert fs["nvfp4"]["scale_bits"] == 8


def test_reference_vectors_bit_exact():
    idx = os.path.join(ROOT, "tests", "vectors", "index.tsv")
    n = 0
    for line in open(idx).read().splitlines()[1:]:
        name, fmt, rows, cols, rnd = line.split("\t")[:5]
        shape = (int(rows), int(cols))
        x = np.fromfile(os.path.join(ROOT, "tests", "vectors", name + ".in.f32"), dtype=np.float32).reshape(shape)
        want = np.fromfile(os.path.join(ROOT, "tests", "vectors", name + ".out.f32"), dtype=np.float32).reshape(shape)
        assert same_bits(blockq.qdq(x, fmt, round=rnd), want), name
        n += 1
    assert n >= 100


def test_qdq_equals_cli(tmp_path):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 96)) * np.exp(rng.standard_normal((16, 96)))).astype(np.float32)
    x.tofile(tmp_path / "in.f32")
    for fmt in ("mxfp4", "bfp6_b16", "nvfp4", "int4_g32", "bme3m2_b16", "fp8_e4m3"):
        subprocess.run([CLI, "qdq", fmt, "--shape", "16x96", str(tmp_path / "in.f32"), str(tmp_path / "out.f32")],
                       check=True)
        want = np.fromfile(tmp_path / "out.f32", dtype=np.float32).reshape(16, 96)
        assert same_bits(blockq.qdq(x, fmt), want), fmt


def test_axis_pack_unpack_and_stochastic():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64, 5)).astype(np.float32)
    y = blockq.qdq(x, "mxfp6_e2m3", axis=1)
    assert same_bits(y, np.moveaxis(blockq.qdq(np.moveaxis(x, 1, -1), "mxfp6_e2m3"), -1, 1))
    p = blockq.pack(x, "mxfp6_e2m3", axis=1)
    assert p.dtype == np.uint8 and p.size == blockq.packed_size("mxfp6_e2m3", 15, 64)
    assert same_bits(blockq.unpack(p, "mxfp6_e2m3", x.shape, axis=1), y)
    buf = np.empty((3, 5, 64), np.float32)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    assert blockq.qdq(xl, "mxfp6_e2m3", out=buf) is buf and same_bits(np.moveaxis(buf, -1, 1), y)
    with pytest.raises(ValueError):
        blockq.qdq(x, "mxfp6_e2m3", axis=1, out=np.empty_like(x))
    s1 = blockq.qdq(x, "bfp4_b16", round="stochastic", seed=9)
    assert same_bits(s1, blockq.qdq(x, "bfp4_b16", round="stochastic", seed=9))
    assert not same_bits(s1, blockq.qdq(x, "bfp4_b16", round="stochastic", seed=10))


def test_conversions_and_errors():
    x64 = np.linspace(-3, 3, 64)
    with pytest.warns(blockq.ConversionWarning):
        y = blockq.qdq(x64, "mxfp4")
    assert y.dtype == np.float32 and same_bits(y, blockq.qdq(x64.astype(np.float32), "mxfp4"))
    xt = np.arange(64 * 32, dtype=np.float32).reshape(64, 32).T  # not contiguous: converted silently
    assert same_bits(blockq.qdq(xt, "mxfp8_e4m3"), blockq.qdq(np.ascontiguousarray(xt), "mxfp8_e4m3"))
    with pytest.raises(blockq.Error) as e:
        blockq.qdq(x64.astype(np.float32), "mxfp3")
    assert e.value.status == "bad format" and "mxfp3" in str(e.value)
    with pytest.raises(ValueError):
        blockq.qdq(x64.astype(np.float32), "mxfp4", round="up")
    with pytest.raises(blockq.Error):
        blockq.unpack(np.zeros(3, np.uint8), "mxfp4", (1, 32))


def test_torch_round_trip_and_ste():
    torch = pytest.importorskip("torch")
    import blockq.torch as bqt
    x = torch.randn(8, 64, dtype=torch.float32)
    y = blockq.qdq(x, "mxfp4")
    assert isinstance(y, torch.Tensor) and same_bits(y.numpy(), blockq.qdq(x.numpy(), "mxfp4"))
    xr = x.clone().requires_grad_(True)
    out = bqt.fake_quant(xr, "mxfp4")
    out.sum().backward()
    assert same_bits(out.detach().numpy(), y.numpy()) and torch.equal(xr.grad, torch.ones_like(xr))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    ref = [net[0].weight.detach().clone(), net[0].bias.detach().clone(), net[2].weight.detach().clone(), net[2].bias.detach().clone()]
    bqt.quantize_module(net, {"w": "mxfp4", "a": "mxint8", "rules": {"2": {"w": "bfp8_b16"}}})
    assert isinstance(net[0], bqt.QuantLinear) and net[2].w_fmt == "bfp8_b16" and net[2].a_fmt == "mxint8"
    got = net(x).detach().numpy()
    h = np.maximum(blockq.qdq(x.numpy(), "mxint8") @ blockq.qdq(ref[0].numpy(), "mxfp4").T + ref[1].numpy(), 0)
    want = blockq.qdq(h.astype(np.float32), "mxint8") @ blockq.qdq(ref[2].numpy(), "bfp8_b16").T + ref[3].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    return blockq.Model(MODEL)


def test_model_tokenize_logits(model):
    ids = model.tokenize("Hello, world!")
    assert list(ids) == [40, 484, 79, 12, 1994, 1]
    assert model.detokenize(ids) == "Hello, world!"
    lg = model.logits(ids)
    assert lg.shape == (6, model.vocab) and np.all(np.isfinite(lg))


def test_perplexity_equals_cli(model):
    r = model.perplexity(open(TEXT, encoding="utf-8").read(), ctx=128, chunks=4)
    out = subprocess.run([CLI, "ppl", "--model", MODEL, "--text", TEXT, "--ctx", "128", "--chunks", "4", "--json"],
                         check=True, capture_output=True, text=True).stdout
    cli = json.loads(out.strip().splitlines()[-1])
    assert r["windows"] == cli["windows"] == 4 and r["tokens_scored"] == cli["tokens_scored"]
    assert f"{r['ppl']:.6f}" == f"{cli['ppl']:.6f}" and f"{r['nll']:.9f}" == f"{cli['nll']:.9f}"
    s = model.perplexity(open(TEXT, encoding="utf-8").read(), ctx=128, chunks=4, stages=3)  # pipeline stages: same bits
    assert s["nll"] == r["nll"] and s["ppl"] == r["ppl"]
    with pytest.raises(Exception, match="a stage holds at least one layer"):
        model.perplexity(open(TEXT, encoding="utf-8").read(), ctx=128, chunks=1, stages=9)


def test_generate_equals_cli(model):
    g = model.generate("In the beginning", n=8, temperature=0.8, top_p=0.9, seed=5)
    out = subprocess.run([CLI, "generate", "--model", MODEL, "--prompt", "In the beginning", "-n", "8",
                          "--temperature", "0.8", "--top-p", "0.9", "--seed", "5", "--json"],
                         check=True, capture_output=True, text=True).stdout
    assert list(g["ids"]) == json.loads(out)["ids"] and g["gen_tokens"] == 8
    s = model.generate("In the beginning", n=8, temperature=0.8, top_p=0.9, seed=5, stages=2)  # pipeline stages
    assert list(s["ids"]) == list(g["ids"])


def test_quantize_save_reload(tmp_path):
    m = blockq.Model(MODEL, config={"wq": "mxfp4", "aq": "mxint8", "packed": True})
    path = str(tmp_path / "m.bq")
    m.save(path)
    back = blockq.Model(path)
    ids = m.tokenize("A packed model runs like the one it came from.")
    assert same_bits(m.logits(ids), back.logits(ids))
    with pytest.raises(blockq.Error):
        blockq.Model(str(tmp_path / "missing"))


def test_cuda_tensor_on_device():
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and blockq.cuda_available()):
        pytest.skip("no CUDA device for torch and libblockq.so: the device path is not exercised")
    x = torch.randn(16, 96, device="cuda")
    y = blockq.qdq(x, "mxfp4", axis=0)
    assert y.is_cuda and same_bits(y.cpu().numpy(), blockq.qdq(x.cpu().numpy(), "mxfp4", axis=0))
