/* Model files: .bq and GGUF written by blockq load back to the same logits
 * bit for bit, carry the tokenizer, take their true size; every kind of damage
 * to a file is reported, never crashes; GGUF block types decode as specified. */
#include "blockq.h"
#include "harness.h"
#include "model.h"
#include "pmat.h"
#include "slots.h"
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *DIR_ = "models/llama-19m-en";

static bq_model *load_cfg(const char *dir, const char *toml, int pack)
{
    bq_model *m;
    if (bq_model_load(dir, &m)) { CHECK(0, "load %s: %s", dir, bq_last_error()); return NULL; }
    FILE *f = fopen(t_tmp("bq_files.toml"), "w");
    fputs(toml, f);
    fclose(f);
    bq_qconfig *q;
    bq_qconfig_new(&q);
    bq_status st = bq_qconfig_load(q, t_tmp("bq_files.toml"));
    if (!st) st = pack ? bq_model_pack(m, q, 0) : bq_model_quantize(m, q, 0);
    bq_qconfig_free(q);
    if (st) { CHECK(0, "quantize: %s", bq_last_error()); bq_model_free(m); return NULL; }
    return m;
}

static float *logits(const bq_model *m, int n)
{
    int32_t ids[40];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919) % 4000 + 5);
    int V = bq_model_vocab(m);
    float *lg = malloc((size_t)n * V * 4);
    if (bq_model_logits(m, ids, n, lg)) CHECK(0, "logits: %s", bq_last_error());
    return lg;
}

static long fsize(const char *p)
{
    struct stat sb;
    return stat(p, &sb) ? -1 : (long)sb.st_size;
}

static void *slurp(const char *p, size_t *n)
{
    void *d;
    if (bq_read_file(p, &d, n)) return NULL;
    return d;
}

static void spit(const char *p, const void *d, size_t n)
{
    FILE *f = fopen(p, "wb");
    fwrite(d, 1, n, f);
    fclose(f);
}

/* Load must fail with a message containing `msg`. */
static void expect_bad(const char *path, const char *msg, const char *what)
{
    bq_model *m = NULL;
    bq_status st = bq_model_load(path, &m);
    CHECK(st != BQ_OK && !m, "%s: loaded", what);
    CHECK(st == BQ_OK || strstr(bq_last_error(), msg), "%s: message '%s' lacks '%s'", what, bq_last_error(), msg);
    bq_model_free(m);
}

static const char *MIXED =
    "attn = \"mxfp8_e4m3\"\n"
    "default = { w = \"mxfp4\", a = \"mxint8\" }\n"
    "\"*.self_attn.*\" = { w = \"mxint8\" }\n"
    "\"layers.7.*\" = { w = \"mxfp6_e2m3\", a = \"fp32\" }\n"
    "lm_head = { w = \"nvfp4\" }\n"
    "embed_tokens = { w = \"int8_b32_sfp16\" }\n";

/* The .bq at path with its header edited in place (same length), each edit refused
 * with its message. */
typedef struct { const char *from, *to, *msg; } lie;
static void header_lies(const char *path, const lie *lies, size_t n)
{
    void *buf;
    size_t size;
    if (bq_read_file(path, &buf, &size)) { CHECK(0, "read back %s", path); return; }
    for (size_t i = 0; i < n; i++) {
        char *copy = malloc(size), *hit;
        memcpy(copy, buf, size);
        uint64_t hlen;
        memcpy(&hlen, copy + 16, 8);
        char save = copy[24 + hlen];
        copy[24 + hlen] = 0;
        hit = strstr(copy + 24, lies[i].from);
        copy[24 + hlen] = save;
        CHECK(hit != NULL, "the header has no '%s'", lies[i].from);
        if (hit) {
            memcpy(hit, lies[i].to, strlen(lies[i].to));
            spit(t_tmp("bq_lie.bq"), copy, size);
            expect_bad(t_tmp("bq_lie.bq"), lies[i].msg, lies[i].to);
        }
        free(copy);
    }
    free(buf);
}

/* p (packed from cfg) saved to a .bq of version ver, then loaded: the same logits bit
 * for bit; each header lie refused by name. what: for messages. */
static void saved_same(const char *cfg, const char *name, uint32_t ver, const char *what, const lie *lies, size_t nlies)
{
    bq_model *p = load_cfg(DIR_, cfg, 1);
    if (!p) return;
    const char *path = t_tmp(name);
    CHECK(bq_model_save(p, path) == BQ_OK, "save with %s: %s", what, bq_last_error());
    size_t size;
    uint8_t *buf = slurp(path, &size);
    uint32_t v = 0;
    if (buf && size > 12) memcpy(&v, buf + 8, 4);
    CHECK(v == ver, ".bq with %s is version %u, not %u", what, ver, v);
    free(buf);
    bq_model *l = NULL;
    if (bq_model_load(path, &l)) { CHECK(0, "load .bq with %s: %s", what, bq_last_error()); bq_model_free(p); return; }
    int n = 12, V = bq_model_vocab(p);
    float *a = logits(p, n), *b = logits(l, n);
    CHECK(!memcmp(a, b, (size_t)n * V * 4), ".bq with %s gives the in-memory model's logits bit for bit", what);
    free(a); free(b);
    bq_model_free(l);
    bq_model_free(p);
    header_lies(path, lies, nlies);
}

/* LoRC factors in a .bq (version 2). */
static void bq_lorc(void)
{
    static const lie lies[] = {
        {"\"rank\":4", "\"rank\":0", "LoRC rank must be an integer in [1, "},
        {"\"rank\":4", "\"rank\":9", "LoRC A holds"},
        {"\"b\":{\"offset\"", "\"c\":{\"offset\"", "LoRC B is missing"},
    };
    saved_same("ptq = \"lorc:4\"\ndefault = { w = \"int4_g128\", a = \"mxint8\" }\n", "bq_lorc.bq", 2, "LoRC factors", lies,
               sizeof lies / sizeof *lies);
}

/* Online rotations (--ptq hadamard,hadamard_kv) in a .bq (version 3). */
static void bq_hadamard(void)
{
    static const lie lies[] = {
        {"\"m\":1,", "\"m\":2,", "p x m = 1024"},
        {"\"sign\":{", "\"sigx\":{", "rot_down's sign is missing"},
        {"\"version\":3", "\"version\":2", "rot_down in a version 2 header"},
        {"\"rot_qk\":{\"p\":64", "\"rot_qk\":{\"p\":32", "rot_qk needs whole p (a power of two) and m with p x m = 64"},
    };
    saved_same("ptq = \"hadamard:2,hadamard_kv:5\"\nkv = \"int4_g64\"\ndefault = { w = \"int8_row\", a = \"int6\" }\n", "bq_had.bq", 3,
               "online rotations", lies, sizeof lies / sizeof *lies);
}

static void bq_roundtrip(void)
{
    bq_model *p = load_cfg(DIR_, MIXED, 1), *f = load_cfg(DIR_, MIXED, 0);
    if (!p || !f) return;
    /* a float tensor of bf16 numbers is stored as its bits: -0 stays -0 (bf16 as a
     * number format would round it to +0, as fake quantisation does) */
    int H = p->c.embed_dim;
    float *ln = p->L[0].ln1.w, *ln0 = malloc((size_t)H * 4);
    if (ln && ln0) {
        memcpy(ln0, ln, (size_t)H * 4);
        for (int i = 0; i < H; i++) {  /* bf16 numbers: stored as bf16 */
            uint32_t u;
            memcpy(&u, &ln[i], 4);
            u &= 0xffff0000u;
            memcpy(&ln[i], &u, 4);
        }
        ln[1] = -0.0f;
    }
    const char *path = t_tmp("bq_test.bq");
    CHECK(bq_model_save(p, path) == BQ_OK, "save: %s", bq_last_error());
    bq_model *l;
    if (bq_model_load(path, &l)) { CHECK(0, "load .bq: %s", bq_last_error()); return; }
    int n = 12, V = bq_model_vocab(p);
    float *a = logits(p, n), *b = logits(l, n), *c = logits(f, n);
    CHECK(!memcmp(a, b, (size_t)n * V * 4), ".bq load gives the packed model's logits bit for bit");
    const float *back = l->L[0].ln1.w;
    CHECK(ln && ln0 && back && signbit(back[1]) && back[1] == 0.0f && !memcmp(back, ln, (size_t)H * 4),
          "a bf16 float tensor with -0 came back as %g", back ? (double)back[1] : NAN);
    if (ln && ln0) memcpy(ln, ln0, (size_t)H * 4);
    free(ln0);
    double d = 0, mx = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) { d = t_max(d, fabs(a[i] - c[i])); mx = t_max(mx, fabs(c[i])); }
    printf("  .bq (mixed W/A config) vs fake quantisation: max|diff|/max|logit| = %.2e\n", d / mx);
    /* true size: every tensor's packed bytes + blobs + header, and nothing more than alignment */
    size_t want = 0;
    slot_list sl;
    model_slots(l, &sl);
    for (int i = 0; i < sl.n; i++) {
        slot *s = &sl.v[i];
        size_t e = (size_t)s->rows * (s->cols ? (size_t)s->cols : 1);
        if (s->p && *s->p) want += bq_packed_size((*s->p)->f, (size_t)s->rows, (size_t)s->cols);
        else if (*s->f && !(model_head_tied(l) && !strcmp(s->name, "lm_head.weight"))) want += e * 2;  /* bf16 */
    }
    free(sl.v);
    want += l->config_len + l->tokenizer_len;
    long got = fsize(path);
    printf("  .bq file %ld bytes; tensors + blobs %zu; overhead %.3f%%\n", got, want, 100.0 * (got - (double)want) / want);
    CHECK(got > 0 && (double)got <= want * 1.01, ".bq size %ld vs %zu payload", got, want);
    /* the tokenizer came along */
    bq_tokenizer *t1, *t2;
    CHECK(bq_tokenizer_from_model(l, &t1) == BQ_OK && bq_tokenizer_from_model(f, &t2) == BQ_OK, "tokenizers");
    int32_t *i1, *i2;
    size_t n1, n2;
    const char *txt = "The quick brown fox, 1234 times!";
    OK(bq_tokenize(t1, txt, strlen(txt), &i1, &n1));
    OK(bq_tokenize(t2, txt, strlen(txt), &i2, &n2));
    CHECK(n1 == n2 && !memcmp(i1, i2, n1 * 4), ".bq tokenizer");
    free(i1); free(i2);
    bq_tokenizer_free(t1); bq_tokenizer_free(t2);
    /* asking a packed model for another weight format is refused */
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "wq", "bfp8_b16"));
    CHECK(bq_model_quantize(l, q, 0) != BQ_OK && strstr(bq_last_error(), "stored packed as"), "requantise packed: %s", bq_last_error());
    bq_qconfig_free(q);
    free(a); free(b); free(c);
    bq_model_free(l);
    bq_model_free(p);
    bq_model_free(f);
}

/* The file cut at each length must be refused. */
static void truncations(const uint8_t *d, const size_t *cuts, int n, const char *bad)
{
    for (int i = 0; i < n; i++) {
        spit(bad, d, cuts[i]);
        bq_model *m = NULL;
        CHECK(bq_model_load(bad, &m) != BQ_OK, "%s truncated at %zu loads", bad, cuts[i]);
        bq_model_free(m);
    }
}

static void patch_u64(uint8_t *d, size_t off, uint64_t v) { memcpy(d + off, &v, 8); }

static void bq_damage(void)
{
    size_t n;
    uint8_t *d = slurp(t_tmp("bq_test.bq"), &n);
    if (!d) { CHECK(0, "no .bq written"); return; }
    const char *bad = t_tmp("bq_bad.bq");
    size_t cuts[] = {3, 8, 20, 24, 100, n / 2, n - 1};
    truncations(d, cuts, 7, bad);
    uint8_t *e = malloc(n);
    memcpy(e, d, n); e[0] = 'X'; spit(bad, e, n);
    expect_bad(bad, "unknown magic", "bad magic");
    memcpy(e, d, n); e[8] = 9; spit(bad, e, n);
    expect_bad(bad, "version 9", "bad version");
    memcpy(e, d, n); patch_u64(e, 16, (uint64_t)n * 4); spit(bad, e, n);
    expect_bad(bad, "runs past the end", "header length");
    memcpy(e, d, n); e[24] = '['; spit(bad, e, n);
    expect_bad(bad, "not valid JSON", "broken JSON");
    memcpy(e, d, n); e[n - 100] ^= 0x55; spit(bad, e, n);
    expect_bad(bad, "checksum mismatch", "flipped data byte");
    /* edits inside the JSON header (same length, so offsets stay valid) */
    uint64_t hl;
    memcpy(&hl, d + 16, 8);
    struct { const char *from, *to, *msg; } ed[] = {
        {"\"offset\":0,", "\"offset\":9,", "aligned"},
        {"\"name\":\"layers.0.ln1.weight\"", "\"name\":\"layers.0.lnX.weight\"", "unknown tensor"},
        {"\"shape\":[384]", "\"shape\":[385]", "the config implies"},
        {"\"format\":\"mxfp4\"", "\"format\":\"mxfp5\"", "unknown format"},
        {"\"format\":\"nvfp4\"", "\"format\":\"mxfp4\"", "takes"},
        {"\"format\":\"blockq\"", "\"format\":\"blockz\"", "not a blockq model header"},
    };
    for (size_t i = 0; i < sizeof ed / sizeof *ed; i++) {
        memcpy(e, d, n);
        char *h = (char *)e + 24, *at = memmem(h, hl, ed[i].from, strlen(ed[i].from));
        if (!at || strlen(ed[i].from) != strlen(ed[i].to)) { CHECK(0, "edit %zu not applicable", i); continue; }
        memcpy(at, ed[i].to, strlen(ed[i].to));
        spit(bad, e, n);
        expect_bad(bad, ed[i].msg, ed[i].to);
    }
    /* a size that lies: bump the size of one tensor */
    memcpy(e, d, n);
    char *sz = memmem((char *)e + 24, hl, "\"size\":", 7);
    if (sz) { sz[7] = sz[7] == '9' ? '8' : (char)(sz[7] + 1); spit(bad, e, n); expect_bad(bad, "", "lying size"); }
    free(e);
    free(d);
    unlink(bad);
}

static void gguf_roundtrip(const char *dir, const char *wq, int exact_vs_packed)
{
    bq_model *p;
    if (bq_model_load(dir, &p)) { CHECK(0, "load %s: %s", dir, bq_last_error()); return; }
    if (wq) {
        bq_qconfig *q;
        bq_qconfig_new(&q);
        OK(bq_qconfig_set(q, "wq", wq));
        if (bq_model_pack(p, q, 0)) CHECK(0, "pack: %s", bq_last_error());
        bq_qconfig_free(q);
    }
    const char *path = t_tmp("bq_test.gguf");
    bq_status st = bq_model_save_gguf(p, path);
    CHECK(st == BQ_OK, "%s %s: save gguf: %s", dir, wq ? wq : "float", bq_last_error());
    bq_model *l = NULL;
    if (!st && bq_model_load(path, &l)) CHECK(0, "%s: load gguf: %s", dir, bq_last_error());
    if (l) {
        int n = 8, V = bq_model_vocab(p);
        float *a = logits(p, n), *b = logits(l, n);
        if (exact_vs_packed) CHECK(!memcmp(a, b, (size_t)n * V * 4), "%s %s: GGUF logits bit-identical", dir, wq ? wq : "float");
        free(a);
        free(b);
        if (p->tokenizer_json) {
            bq_tokenizer *t1, *t2;
            CHECK(bq_tokenizer_from_model(l, &t1) == BQ_OK, "gguf tokenizer: %s", bq_last_error());
            OK(bq_tokenizer_from_model(p, &t2));
            const char *txt = "Hello, world! It's 2026 -- déjà vu.";
            int32_t *i1 = NULL, *i2 = NULL;
            size_t n1 = 0, n2 = 0;
            if (t1) bq_tokenize(t1, txt, strlen(txt), &i1, &n1);
            bq_tokenize(t2, txt, strlen(txt), &i2, &n2);
            CHECK(n1 == n2 && n1 && !memcmp(i1, i2, n1 * 4), "GGUF tokenizer ids");
            free(i1); free(i2);
            bq_tokenizer_free(t1); bq_tokenizer_free(t2);
        }
    }
    bq_model_free(l);
    bq_model_free(p);
}

static void gguf_tests(void)
{
    gguf_roundtrip(DIR_, "mxfp4", 1);
    gguf_roundtrip(DIR_, "int8_b32_sfp16", 1);
    gguf_roundtrip(DIR_, "int4_b32_sfp16", 1);
    const char *lc[] = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0"};  /* llama.cpp's rules: its own GGUF types */
    for (int i = 0; i < 5; i++) gguf_roundtrip(DIR_, lc[i], 1);
    gguf_roundtrip(DIR_, NULL, 1);
    const char *sh = shared_dir();
    if (!sh) SKIP("../shared absent: GGUF round trips of the tiny qwen2/qwen3/mistral/llama checkpoints");
    else {
        const char *tiny[] = {"llama", "mistral", "qwen2", "qwen3"};
        char d[512];
        for (int i = 0; i < 4; i++) {
            snprintf(d, sizeof d, "%s/models/tiny/%s", sh, tiny[i]);
            gguf_roundtrip(d, "int8_b32_sfp16", 1);
            gguf_roundtrip(d, NULL, 1);
        }
    }
    /* a format without a GGUF type: refused, nothing written */
    bq_model *m;
    OK(bq_model_load(DIR_, &m));
    bq_qconfig *q;
    bq_qconfig_new(&q);
    OK(bq_qconfig_set(q, "wq", "mxint8"));
    OK(bq_model_pack(m, q, 0));
    bq_qconfig_free(q);
    unlink(t_tmp("bq_none.gguf"));
    CHECK(bq_model_save_gguf(m, t_tmp("bq_none.gguf")) != BQ_OK && strstr(bq_last_error(), "no exact GGUF type"), "mxint8 to GGUF: %s", bq_last_error());
    CHECK(access(t_tmp("bq_none.gguf"), F_OK) != 0, "nothing written for a refused GGUF");
    bq_model_free(m);
    /* damage */
    size_t n;
    uint8_t *d = slurp(t_tmp("bq_test.gguf"), &n);
    if (!d) return;
    const char *bad = t_tmp("bq_bad.gguf");
    size_t cuts[] = {4, 12, 23, 60, 1000, n / 3, n - 7};
    truncations(d, cuts, 7, bad);
    uint8_t *e = malloc(n);
    memcpy(e, d, n); e[4] = 2; spit(bad, e, n);
    expect_bad(bad, "version 2", "GGUF v2");
    memcpy(e, d, n); patch_u64(e, 8, 1ull << 40); spit(bad, e, n);
    expect_bad(bad, "cannot fit", "tensor count");
    memcpy(e, d, n);
    char *nm = memmem(e, n, "blk.0.attn_q.weight", 19);
    if (nm) { nm[0] = 'x'; spit(bad, e, n); expect_bad(bad, "unknown tensor", "GGUF tensor name"); }
    memcpy(e, d, n);
    nm = memmem(e, n, "general.architecture", 20);
    if (nm) {
        char *v = memmem(nm, 64, "llama", 5);
        if (v) { memcpy(v, "lxama", 5); spit(bad, e, n); expect_bad(bad, "architecture", "GGUF arch"); }
    }
    free(e);
    free(d);
    unlink(bad);
}

/* GGUF block types against their definitions, on hand-made blocks. */
static void gguf_blocks(void)
{
    uint8_t b[34];
    float y[32];
    uint16_t h = 0x3c00;  /* fp16 1.0 */
    uint16_t h2 = 0xbc00; /* -1.0 */
    /* Q4_1: d = 1, m = -1 -> q - 1 */
    memcpy(b, &h, 2); memcpy(b + 2, &h2, 2);
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(j | (15 - j) << 4);
    gguf_row_to_float(3, b, 32, y);
    int ok = 1;
    for (int j = 0; j < 16; j++) ok &= y[j] == (float)j - 1 && y[j + 16] == (float)(15 - j) - 1;
    CHECK(ok, "Q4_1 decode");
    /* Q5_0 (d = 1: code - 16) and Q5_1 (d = 1, m = -1, codes unsigned: code - 1); element j
     * has low nibble j%16 and its high bit from qh bit j */
    uint32_t qh = 0xA5A5F00Fu;
    for (int v = 0; v < 2; v++) {
        const int hs = v ? 4 : 2, off = v ? 1 : 16;
        memcpy(b, &h, 2);
        if (v) memcpy(b + 2, &h2, 2);
        memcpy(b + hs, &qh, 4);
        for (int j = 0; j < 16; j++) b[hs + 4 + j] = (uint8_t)(j | (15 - j) << 4);
        gguf_row_to_float(v ? 7 : 6, b, 32, y);
        ok = 1;
        for (int j = 0; j < 16; j++) {
            int x0 = j | (int)((qh >> j) & 1) << 4, x1 = (15 - j) | (int)((qh >> (j + 16)) & 1) << 4;
            ok &= y[j] == (float)(x0 - off) && y[j + 16] == (float)(x1 - off);
        }
        CHECK(ok, "%s decode", v ? "Q5_1" : "Q5_0");
    }
    /* Q4_0 and Q8_0 */
    memcpy(b, &h2, 2);
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | (15 - j) << 4);
    gguf_row_to_float(2, b, 32, y);
    ok = 1;
    for (int j = 0; j < 16; j++) ok &= y[j] == -(float)(j - 8) && y[j + 16] == -(float)(7 - j);
    CHECK(ok, "Q4_0 decode");
    memcpy(b, &h, 2);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    gguf_row_to_float(8, b, 32, y);
    ok = 1;
    for (int j = 0; j < 32; j++) ok &= y[j] == (float)(j * 8 - 128);
    CHECK(ok, "Q8_0 decode");
    /* MXFP4: scale 2^(130-127) = 8, nibble codes e2m1 */
    static const float e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, 0, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    b[0] = 130;
    for (int j = 0; j < 16; j++) b[1 + j] = (uint8_t)(j | (15 - j) << 4);
    gguf_row_to_float(39, b, 32, y);
    ok = 1;
    for (int j = 0; j < 16; j++) ok &= y[j] == 8 * e2m1[j] && y[j + 16] == 8 * e2m1[15 - j];
    CHECK(ok, "MXFP4 decode");
}

/* A bf16 checkpoint held in its 16 bits: the same logits bit for bit as widened to
 * float32 (the product decodes a slice and runs the same SGEMM), half the memory,
 * quantisation from it equal to quantisation from float32, GGUF export as BF16. */
static void held_bf16(void)
{
    bq_load_opts f32 = {sizeof f32, BQ_HOLD_F32}, nat = {sizeof nat, BQ_HOLD_NATIVE};
    bq_model *a, *b;
    if (bq_model_load_ex(DIR_, &f32, &a) || bq_model_load_ex(DIR_, &nat, &b)) { CHECK(0, "load: %s", bq_last_error()); return; }
    bq_model_mem ma, mb;
    OK(bq_model_memory(a, &ma));
    OK(bq_model_memory(b, &mb));
    CHECK(ma.packed_tensors == 0 && mb.packed_bytes * 2 == mb.packed_params * 4 && mb.packed_params + mb.float_params == ma.float_params,
          "held: %zu packed bytes for %zu weights", mb.packed_bytes, mb.packed_params);
    int n = 24, V = bq_model_vocab(a);
    float *la = logits(a, n), *lb = logits(b, n);
    CHECK(la && lb && !memcmp(la, lb, (size_t)n * V * 4), "held bf16 logits differ from float32");
    free(lb);
    /* one token at a time from the cache (the generation path) */
    int32_t ids[3] = {17, 2000, 5};
    bq_ctx *c;
    float *one = malloc((size_t)V * 4), *ref = malloc((size_t)3 * V * 4);
    OK(bq_model_logits(a, ids, 3, ref));
    if (!bq_ctx_new(b, 3, &c)) {
        for (int t = 0; t < 3; t++) OK(bq_forward(c, &ids[t], 1, one, 0));
        double d = 0;
        for (int v = 0; v < V; v++) d = t_max(d, fabs((double)one[v] - ref[(size_t)2 * V + v]));
        CHECK(d <= 1e-4, "held bf16 decode vs float32 prefill: %.3g", d);  /* 1 row vs 3 rows: other BLAS kernels */
        bq_ctx_free(c);
    }
    free(one);
    free(ref);
    /* quantising held weights equals quantising the float32 ones: packed, and fake
     * quantised (held rows straight back to bf16; int groups, whose values are not
     * bf16 numbers, and NVFP4, whose scale needs the whole tensor, the float32 route) */
    static const char *const wq[] = {"mxfp4", "mxfp4", "bfp6_b16", "int4_g32", "nvfp4", "fp8_e4m3"};
    for (int pack = 0; pack < (int)(sizeof wq / sizeof *wq); pack++) {
        bq_model *qa, *qb;
        if (bq_model_load_ex(DIR_, &f32, &qa) || bq_model_load_ex(DIR_, &nat, &qb)) { CHECK(0, "load"); break; }
        bq_qconfig *q;
        OK(bq_qconfig_new(&q));
        OK(bq_qconfig_set(q, "wq", wq[pack]));
        OK(bq_qconfig_set(q, "head", "bfp8_b16"));
        OK(pack == 1 ? bq_model_pack(qa, q, 0) : bq_model_quantize(qa, q, 0));
        OK(pack == 1 ? bq_model_pack(qb, q, 0) : bq_model_quantize(qb, q, 0));
        bq_qconfig_free(q);
        float *x = logits(qa, 8), *y = logits(qb, 8);
        CHECK(x && y && !memcmp(x, y, (size_t)8 * V * 4), "%s: quantised from held != from float32 (packed %d)", wq[pack], pack == 1);
        free(x);
        free(y);
        bq_model_free(qa);
        bq_model_free(qb);
    }
    /* GGUF keeps the 16 bits */
    const char *g = t_tmp("bq_held.gguf");
    OK(bq_model_save_gguf(b, g));
    bq_model *back;
    if (bq_model_load(g, &back) == BQ_OK) {
        float *lg = logits(back, n);
        CHECK(lg && !memcmp(lg, la, (size_t)n * V * 4), "GGUF of a held model computes something else");
        free(lg);
        bq_model_free(back);
    } else CHECK(0, "reload: %s", bq_last_error());
    unlink(g);
    bq_load_opts bad = {sizeof bad - 1, BQ_HOLD_NATIVE};
    CHECK(bq_model_load_ex(DIR_, &bad, &back) == BQ_ERR_ARG, "options without their size accepted");
    free(la);
    bq_model_free(a);
    bq_model_free(b);
}

/* The files' CRC-32: the standard check value, and a buffer of several pieces (the
 * parallel sum combined) against one byte at a time. */
static void crc32_values(void)
{
    CHECK(bq_crc32("123456789", 9) == 0xCBF43926u, "crc32 check value %08x", bq_crc32("123456789", 9));
    CHECK(bq_crc32("", 0) == 0, "crc32 of nothing");
    size_t n = (40u << 20) + 12345;
    uint8_t *b = malloc(n);
    if (!b) { CHECK(0, "out of memory"); return; }
    uint32_t table[256], c = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t v = i;
        for (int k = 0; k < 8; k++) v = v & 1 ? 0xEDB88320u ^ (v >> 1) : v >> 1;
        table[i] = v;
    }
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(i * 2654435761u >> 13);
    for (size_t i = 0; i < n; i++) c = table[(c ^ b[i]) & 0xff] ^ (c >> 8);
    CHECK(bq_crc32(b, n) == (c ^ 0xFFFFFFFFu), "crc32 of %zu bytes %08x, bytewise %08x", n, bq_crc32(b, n), c ^ 0xFFFFFFFFu);
    free(b);
}

int main(void)
{
    crc32_values();
    held_bf16();
    bq_roundtrip();
    bq_lorc();
    bq_hadamard();
    bq_damage();
    gguf_tests();
    gguf_blocks();
    return test_summary("test_files");
}
