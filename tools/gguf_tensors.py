"""List a GGUF file's tensors: name, GGML type, shape and a SHA-256 of the data,
one line each, so two files can be compared tensor by tensor (the interop tests
diff blockq's Q4_0/Q8_0 against llama-quantize's).  Standard library only.
    python3 tools/gguf_tensors.py FILE.gguf"""
import hashlib
import struct
import sys

SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
ROW = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34)}


def main(path):
    buf = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = buf[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def skip(t):
        nonlocal pos
        if t == 8:
            string()
        elif t == 9:
            at, n = take("I"), take("Q")
            for _ in range(n):
                skip(at)
        else:
            pos += SCALAR[t]

    if buf[:4] != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    pos = 4
    take("I")
    nt, nkv = take("Q"), take("Q")
    align = 32
    for _ in range(nkv):
        key, t = string(), take("I")
        if key == "general.alignment" and t == 4:
            align = take("I")
        else:
            skip(t)
    infos = []
    for _ in range(nt):
        name, nd = string(), take("I")
        dims = [take("Q") for _ in range(nd)]
        t, off = take("I"), take("Q")
        infos.append((name, t, dims, off))
    base = (pos + align - 1) // align * align
    for name, t, dims, off in infos:
        per, size = ROW.get(t, (None, None))
        if per is None:
            print(f"{name}\ttype {t}\t{dims}\t(size unknown to this tool)")
            continue
        n = 1
        for d in dims:
            n *= d
        data = buf[base + off:base + off + n // per * size]
        print(f"{name}\ttype {t}\t{'x'.join(map(str, dims))}\t{hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main(sys.argv[1])
