/* Number formats: reference vectors (bit-exact, every ISA), pack/unpack
 * round trips, properties, format facts and error handling. */
#include "blockq.h"
#include "harness.h"
#include "grid_points.h"
#include "format.h"
#include "qkern.h"
#include <math.h>
#include <stdint.h>

static const char *const isas[] = {"scalar", "avx2", "avx512"};

static int same_bits(float a, float b)
{
    if (a != a && b != b) return 1;
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y;
}

static float *read_f32(const char *path, size_t n)
{
    void *d;
    size_t sz;
    if (bq_read_file(path, &d, &sz)) return NULL;
    if (sz != n * 4) { free(d); return NULL; }
    return d;
}

/* ---- 1. every reference vector, bit for bit, on every ISA ---------------- */
static void test_vectors(void)
{
    FILE *idx = fopen("tests/vectors/index.tsv", "r");
    CHECK(idx != NULL, "tests/vectors/index.tsv missing");
    if (!idx) return;
    char line[512];
    int cases = 0;
    if (!fgets(line, sizeof line, idx)) { fclose(idx); return; }  /* header */
    while (fgets(line, sizeof line, idx)) {
        char name[128], fmt[64], rnd[16];
        size_t rows, cols;
        if (sscanf(line, "%127s %63s %zu %zu %15s", name, fmt, &rows, &cols, rnd) != 5) continue;
        char p[300];
        snprintf(p, sizeof p, "tests/vectors/%s.in.f32", name);
        float *in = read_f32(p, rows * cols);
        snprintf(p, sizeof p, "tests/vectors/%s.out.f32", name);
        float *want = read_f32(p, rows * cols);
        CHECK(in && want, "%s: cannot read vector files", name);
        bq_format *f = NULL;
        CHECK(bq_format_parse(fmt, &f) == BQ_OK, "%s: format %s: %s", name, fmt, bq_last_error());
        bq_qopts o = {0};
        o.round = !strcmp(rnd, "away") ? BQ_ROUND_AWAY : BQ_ROUND_RNE;
        float *got = malloc(rows * cols * 4);
        for (size_t k = 0; f && in && want && k < 3; k++) {
            if (isa_absent(bq_set_isa(isas[k]), isas[k])) continue;
            OK(bq_qdq(f, in, got, rows, cols, &o));
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < rows * cols; i++)
                if (!same_bits(got[i], want[i]) && !bad++) first = i;
            CHECK(bad == 0, "%s on %s: %zu mismatches, first at %zu: in %a got %a want %a", name, isas[k], bad,
                  first, (double)in[first], (double)got[first], (double)want[first]);
        }
        cases++;
        free(in);
        free(want);
        free(got);
        bq_format_free(f);
    }
    fclose(idx);
    CHECK(cases >= 100, "only %d vector cases read", cases);
    bq_set_isa("scalar");
}

/* ---- inputs: random normal with outliers, and adversarial ------------- */
static void make_inputs(float *x, size_t n, int kind, int with_special)
{
    for (size_t i = 0; i < n; i++) {
        float v = t_normal();
        switch (kind) {
        case 0: break;
        case 1: v *= (t_rand() % 17 == 0) ? 300.0f : 1.0f; break;                   /* outliers */
        case 2: v = ldexpf(v, (int)(t_rand() % 60) - 30); break;                      /* wide range */
        default: {                                                                    /* adversarial */
            static const float adv[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 6.0f, 448.0f, 57344.0f, 1e-40f, -1e-45f,
                                        3.4e38f, -3.4e38f, 0.25f, 0.75f, 1.5f, 2.5f, -2.5f, 65504.0f, 1e-30f, 7.5f};
            v = (t_rand() & 1) ? adv[t_rand() % (sizeof adv / sizeof adv[0])] : ldexpf(v, (int)(t_rand() % 250) - 125);
            if ((t_rand() % 64) == 0 && i % 48 == 0) v = 0.0f;
            break;
        }
        }
        x[i] = v;
    }
    if (kind == 3) for (size_t i = 64; i < 96 && i < n; i++) x[i] = 0.0f; /* an all-zero block */
    if (with_special && n > 40) {
        x[3] = INFINITY;
        x[37] = NAN;
        x[n - 1] = -INFINITY;
    }
}

static const char *const extra_formats[] = {
    "fp8_e4m3:sat", "fp8_e5m2:sat", "fp6_e3m2:sat", "fp6_e2m3:sat", "fp4_e2m1:sat", "e4m3:nosub", "e3m4:bias=5",
    "e5m2:inf", "mxfp4_e2m1", "bfp7_b8", "bme3m4_b32", "bl5_b8", "int3_g8", "int8_asym_g64", "int4_asym",
    "fixed12.8", "e3m2_b32_se4m3", "int6_b16_sbf16", "e2m1_b16_sfp32", "int8_b32_se8m0", "e5m2_b32_se8m0",
};

typedef int (*fmt_visit)(const char *name);
static void for_all_formats(void (*fn)(const char *))
{
    for (size_t i = 0; bq_format_list(i); i++) fn(bq_format_list(i));
    for (size_t i = 0; i < sizeof extra_formats / sizeof extra_formats[0]; i++) fn(extra_formats[i]);
}

/* ---- 2. pack -> unpack equals fake quantisation ----------------------- */
static void roundtrip_one(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) { CHECK(0, "parse %s: %s", name, bq_last_error()); return; }
    static const size_t shapes[][2] = {{4, 96}, {3, 100}, {2, 33}, {1, 7}};
    for (int kind = 0; kind < 4; kind++)
        for (int r = 0; r < 4; r++)
            for (size_t s = 0; s < 4; s++) {
                size_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
                float *x = malloc(n * 4), *q = malloc(n * 4), *u = malloc(n * 4);
                make_inputs(x, n, kind, 0);
                bq_qopts o = {(bq_round)r, 42, 1};
                bq_qdq(f, x, q, rows, cols, &o);
                size_t sz = bq_packed_size(f, rows, cols);
                uint8_t *p = malloc(sz + 1);
                bq_status st = bq_pack(f, x, rows, cols, &o, p, sz);
                if (st == BQ_ERR_NONFINITE) {
                    /* only acceptable when the fake-quantised tensor has a NaN/Inf the format cannot hold */
                    int nonfinite = 0;
                    for (size_t i = 0; i < n; i++) nonfinite |= !isfinite(q[i]);
                    CHECK(nonfinite, "%s: pack refused a finite tensor: %s", name, bq_last_error());
                } else {
                    CHECK(st == BQ_OK, "%s: pack: %s", name, bq_last_error());
                    CHECK(bq_unpack(f, p, sz, rows, cols, u) == BQ_OK, "%s: unpack: %s", name, bq_last_error());
                    size_t bad = 0, first = 0;
                    for (size_t i = 0; i < n; i++)
                        if (!(u[i] == q[i] || (u[i] != u[i] && q[i] != q[i])) && !bad++) first = i;
                    CHECK(bad == 0, "%s kind %d round %d shape %zux%zu: %zu differ, first %zu: x %a qdq %a unpack %a",
                          name, kind, r, rows, cols, bad, first, (double)x[first], (double)q[first], (double)u[first]);
                    CHECK(bq_unpack(f, p, sz - 1, rows, cols, u) == BQ_ERR_SHAPE, "%s: short packed buffer accepted", name);
                }
                free(x); free(q); free(u); free(p);
            }
    bq_format_free(f);
}

/* The per-ISA packer (codes from the vectorised grid loops, groups written bytewise)
 * against pack.c's scalar reference, byte for byte: every shape (short last groups,
 * rows of one group), input kind (zeros, -0, subnormals, outliers, Inf/NaN rows),
 * rounding mode, ISA and two thread counts. */
static int fast_rows_seen;
static void fastpack_one(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) { CHECK(0, "parse %s: %s", name, bq_last_error()); return; }
    static const size_t shapes[][2] = {{5, 256}, {3, 100}, {2, 33}, {1, 7}, {70, 1024}};
    for (int kind = 0; kind < 4; kind++)
        for (int r = 0; r < 4; r++)
            for (size_t s = 0; s < 5; s++) {
                size_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols;
                if (s == 4 && (r || kind != 3)) continue;  /* the threaded shape: once, adversarial */
                float *x = malloc(n * 4);
                make_inputs(x, n, kind, kind == 1 && s == 0);
                bq_qopts o = {(bq_round)r, 42, 1};
                size_t sz = bq_packed_size(f, rows, cols);
                uint8_t *want = malloc(sz), *got = malloc(sz);
                bq_status sw = pack_tensor(f, x, rows, cols, &o, want, sz, 0);
                for (int a = 0; a < 3; a++)
                    for (int t = 1; t <= 3; t += 2) {
                        if (isa_absent(bq_set_isa(isas[a]), isas[a])) continue;
                        o.threads = t;
                        memset(got, 0xa5, sz);
                        bq_status sg = pack_tensor(f, x, rows, cols, &o, got, sz, 1);
                        CHECK(sg == sw, "%s kind %d round %d %zux%zu on %s: status %d, reference %d", name, kind, r, rows,
                              cols, isas[a], sg, sw);
                        size_t d = 0;
                        while (!sw && d < sz && got[d] == want[d]) d++;
                        CHECK(sw || d == sz, "%s kind %d round %d %zux%zu on %s, %d threads: byte %zu of %zu differs (%02x, reference %02x)",
                              name, kind, r, rows, cols, isas[a], t, d, sz, d < sz ? got[d] : 0, d < sz ? want[d] : 0);
                    }
                bq_set_isa("scalar");
                free(x); free(want); free(got);
            }
    /* that the kernel takes this format at all: a finite row it must not hand back */
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)(i - 30) * 0.37f;
    qctx c = {.round = BQ_ROUND_RNE, .cols = 64};
    uint32_t sc[64];
    uint8_t ec[4096];  /* the last group padded to its full length (blocks up to 4096) */
    float tmp[64];
    if (bq_pack_codes_for(f)(f, &c, x, 64, 0, sc, ec, tmp)) fast_rows_seen++;
    bq_format_free(f);
}

/* pack_row_put then pack_row_codes give back every code (the bytewise paths for 4-,
 * 6- and 8-bit groups and the bit stream for the short last group and other widths),
 * and the row is the scalar packer's bytes for the same codes. */
static void test_row_codes(void)
{
    const char *names[] = {"mxfp4", "mxfp6_e2m3", "bfp6_b16", "mxint8", "bfp5_b16", "int4_g32", "nvfp4", "bfp3_b8"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        bq_format *f;
        if (bq_format_parse(names[k], &f)) { CHECK(0, "%s does not parse", names[k]); continue; }
        for (size_t cols = 8; cols <= 200; cols += 24) {
            size_t g = pack_group_len(f, cols), ng = (cols + g - 1) / g, rb = pack_row_bytes(f, cols);
            uint32_t sc[64], sc2[64];
            uint8_t ec[256], ec2[256], row[1024];
            for (size_t i = 0; i < ng; i++) sc[i] = t_rand() & 0xffu;
            for (size_t i = 0; i < cols; i++) ec[i] = (uint8_t)(t_rand() & ((1u << f->el.bits) - 1u));
            memset(row, 0xa5, sizeof row);
            pack_row_put(f, row, cols, sc, ec);
            pack_row_codes(f, row, cols, sc2, ec2);
            int same = !memcmp(ec, ec2, cols);
            for (size_t i = 0; i < ng && f->scale_bits; i++) same &= sc[i] == sc2[i];
            CHECK(same && row[rb] == 0xa5, "%s, %zu columns: codes written and read back differ (or the row overran)", names[k], cols);
        }
        bq_format_free(f);
    }
}

/* Exact byte counts for a few hand-computed cases. */
static void test_packed_sizes(void)
{
    struct { const char *f; size_t r, c, bytes; } cases[] = {
        {"mxfp4", 2, 64, 2 * 2 * (1 + 16)},       /* 2 blocks/row: 8-bit scale + 32 nibbles */
        {"mxfp6_e2m3", 1, 32, 1 + 24},            /* 32 six-bit codes = 24 bytes */
        {"mxint8", 3, 100, 3 * 4 * 33},           /* short last block padded to 32 */
        {"nvfp4", 4, 32, 4 + 4 * 2 * 9},          /* tensor fp32 + 2 x (e4m3 + 8 bytes) per row */
        {"bfp6_b16", 1, 16, (8 + 96) / 8},
        {"bfp5_b16", 2, 32, 2 * (2 * (8 + 80)) / 8},
        {"fp8_e4m3", 5, 7, 35},
        {"fp4_e2m1", 3, 3, 3 * 2},                /* 12 bits per row -> 2 bytes */
        {"int4_g128", 1, 256, 2 * (4 + 64)},
        {"int8_asym_row", 2, 10, 2 * (5 + 10)},
        {"int8", 2, 10, 4 + 20},
        {"e2m1_b32_sfp16", 1, 32, 2 + 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bq_format *f;
        if (bq_format_parse(cases[i].f, &f)) { CHECK(0, "parse %s", cases[i].f); continue; }
        size_t got = bq_packed_size(f, cases[i].r, cases[i].c);
        CHECK(got == cases[i].bytes, "%s %zux%zu: %zu bytes, expected %zu", cases[i].f, cases[i].r, cases[i].c, got,
              cases[i].bytes);
        bq_format_free(f);
    }
}

/* The packed bytes of MXFP4 follow the OCP layout: E8M0 scale, then nibbles low first. */
static void test_mxfp4_layout(void)
{
    float x[32] = {0};
    x[0] = 1.0f;   /* amax 6 -> shared exp floor(log2 6) - 2 = 0 -> scale code 127 */
    x[1] = -0.5f;  /* e2m1 code 1001 = 0x9 */
    x[2] = 6.0f;   /* 0111 = 0x7 */
    x[3] = 1.5f;   /* 0011 = 0x3 */
    bq_format *f;
    bq_format_parse("mxfp4", &f);
    uint8_t p[17];
    bq_pack(f, x, 1, 32, NULL, p, sizeof p);
    CHECK(p[0] == 127, "scale code %u", p[0]);
    CHECK(p[1] == 0x92, "byte 1 = %#x (codes 0x2 | 0x9<<4 expected)", p[1]);
    CHECK(p[2] == 0x37, "byte 2 = %#x", p[2]);
    bq_format_free(f);
}

/* ---- 3. properties ------------------------------------------------------ */
static int idempotent_family(const bq_format_info *in)
{
    /* power-of-two scales chosen from amax are stable; fp32-computed scales
     * (int, scaled, NVFP4) may move by an ulp, BFP by the documented clamp */
    return !strcmp(in->family, "mx") || !strcmp(in->family, "bm") || !strcmp(in->family, "bl") ||
           !strcmp(in->family, "minifloat") || !strcmp(in->family, "fixed") || !strcmp(in->family, "log") ||
           !strcmp(in->family, "fp32");
}

static void properties_one(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return;
    bq_format_info in;
    bq_format_get_info(f, &in);
    size_t rows = 6, cols = 96, n = rows * cols;
    float *x = malloc(n * 4), *q = malloc(n * 4), *qq = malloc(n * 4), *nx = malloc(n * 4), *nq = malloc(n * 4);
    /* asymmetric int, two's complement fixed point and a per-block minimum (q4_1, q5_1) are asymmetric by definition */
    int symmetric = !strstr(name, "asym") && strcmp(in.family, "fixed") && strcmp(name, "q4_1") && strcmp(name, "q5_1");
    for (int kind = 0; kind < 4; kind++) {
        make_inputs(x, n, kind, 0);
        bq_qopts o = {BQ_ROUND_RNE, 0, 1};
        bq_qdq(f, x, q, rows, cols, &o);
        /* idempotence */
        if (idempotent_family(&in)) {
            bq_qdq(f, q, qq, rows, cols, &o);
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < n; i++)
                if (!same_bits(q[i], qq[i]) && !(q[i] == 0 && qq[i] == 0) && !bad++) first = i; /* -0 -> +0 by convention */
            CHECK(bad == 0, "%s kind %d: quantising twice changed %zu values, first %zu: x %a q %a qq %a", name, kind,
                  bad, first, (double)x[first], (double)q[first], (double)qq[first]);
        }
        /* sign symmetry */
        if (symmetric) {
            for (size_t i = 0; i < n; i++) nx[i] = -x[i];
            bq_qdq(f, nx, nq, rows, cols, &o);
            size_t bad = 0;
            /* zeros compare by value: a value that underflows float32 while being scaled gives +0 either way */
            for (size_t i = 0; i < n; i++) bad += x[i] != 0.0f && !same_bits(nq[i], -q[i]) && !(nq[i] == 0 && q[i] == 0);
            CHECK(bad == 0, "%s kind %d: q(-x) != -q(x) at %zu places", name, kind, bad);
        }
        /* saturation bound and finiteness for finite inputs */
        size_t over = 0, nonfinite = 0;
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(q[i])) { nonfinite += !(in.family[0] == 'm' && in.family[1] == 'i'); continue; }
            over += fabsf(q[i]) > in.max_normal;
        }
        CHECK(over == 0, "%s kind %d: %zu values above max_normal %g", name, kind, over, in.max_normal);
        CHECK(nonfinite == 0 || !strcmp(in.family, "minifloat"), "%s: finite input gave %zu non-finite", name, nonfinite);
        /* monotone within each scale group: x_i <= x_j implies q_i <= q_j */
        size_t g = in.block > 0 ? (size_t)in.block : cols;
        size_t bad = 0;
        for (size_t r = 0; r < rows; r++)
            for (size_t b = 0; b < cols; b += g)
                for (size_t i = b; i < b + g && i < cols; i++)
                    for (size_t j = b; j < b + g && j < cols; j++) {
                        float xi = x[r * cols + i], xj = x[r * cols + j];
                        float qi = q[r * cols + i], qj = q[r * cols + j];
                        if (xi <= xj && isfinite(qi) && isfinite(qj) && !(qi <= qj)) bad++;
                    }
        if (in.block != -2) CHECK(bad == 0, "%s kind %d: %zu monotonicity violations", name, kind, bad);
    }
    /* an all-zero tensor stays zero (+0; q4_0 and q5_0 give -0 as llama.cpp does: their
     * scale is max / -8 (-16) = -0 there, and the files must match llama.cpp's bytes) */
    memset(x, 0, n * 4);
    bq_qdq(f, x, q, rows, cols, NULL);
    size_t nz = 0;
    int neg_zero_ok = !strcmp(name, "q4_0") || !strcmp(name, "q5_0");
    for (size_t i = 0; i < n; i++) nz += neg_zero_ok ? !(q[i] == 0.0f) : !same_bits(q[i], 0.0f);
    CHECK(nz == 0, "%s: zeros became %zu non-zeros", name, nz);
    free(x); free(q); free(qq); free(nx); free(nq);
    bq_format_free(f);
}

/* BFP's documented exception to idempotence: a block whose amax is 2^k loses a step. */
static void test_bfp_clamp(void)
{
    bq_format *f;
    bq_format_parse("bfp4_b16", &f);
    float x[16] = {1.0f, 0.5f}, y[16];
    bq_qdq(f, x, y, 1, 16, NULL);
    CHECK(y[0] == 0.875f && y[1] == 0.5f, "bfp4 of [1, 0.5]: %g %g (expected 0.875 0.5)", y[0], y[1]);
    bq_format_free(f);
}

/* A scale rounded up past amax / max grid value: the top codes dequantise past
 * float32 and saturate at FLT_MAX, the same in fake quantisation and unpacking,
 * in every ISA (the format fuzzer found them disagreeing: inf against FLT_MAX). */
static void test_scale_overflow(void)
{
    const char *names[] = {"int3_b16_sbf16", "int4_b32_sfp16", "int8_g32"};
    float x[32], q[32], u[32];
    for (int i = 0; i < 32; i++) x[i] = (i % 3 ? -1.0f : 1.0f) * 3.40246e38f * ((float)(32 - i) / 32.0f);
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        bq_format *f;
        if (bq_format_parse(names[k], &f)) { CHECK(0, "%s does not parse", names[k]); continue; }
        uint8_t p[64];
        size_t sz = bq_packed_size(f, 1, 32);
        for (int a = 0; a < 3; a++) {
            if (isa_absent(bq_set_isa(isas[a]), isas[a])) continue;
            OK(bq_qdq(f, x, q, 1, 32, NULL));
            OK(bq_pack(f, x, 1, 32, NULL, p, sz));
            OK(bq_unpack(f, p, sz, 1, 32, u));
            size_t bad = 0, inf = 0;
            for (int i = 0; i < 32; i++) {
                bad += !(q[i] == u[i]);
                inf += !isfinite(q[i]);
            }
            CHECK(bad == 0 && inf == 0, "%s on %s near FLT_MAX: %zu values differ, %zu not finite",
                  names[k], isas[a], bad, inf);
        }
        bq_format_free(f);
    }
    bq_set_isa("scalar");
}

/* A negative element whose scaled value rounds to zero only through the two-step
 * product by 2^-E (twice rounded among the subnormals): fake quantisation on every
 * ISA gives the zero the codes hold, sign included (the format fuzzer found the
 * fused power-of-two path keeping the sign the codes lost). */
static void test_zero_sign_subnormal(void)
{
    float x[5] = {-0x1.000068p-121f, 0.0f, -0x1.acc4bep+28f, 0x1.dbc2dap+0f, 0x1.9p-145f}, q[5], u[5];
    const char *names[] = {"bfp4_b16", "bfp8_b16", "mxfp4"};  /* codes with a sign bit: -0 is a code */
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        bq_format *f;
        if (bq_format_parse(names[k], &f)) { CHECK(0, "%s does not parse", names[k]); continue; }
        uint8_t p[64];
        size_t sz = bq_packed_size(f, 1, 5);
        OK(bq_pack(f, x, 1, 5, NULL, p, sz));
        OK(bq_unpack(f, p, sz, 1, 5, u));
        for (int a = 0; a < 3; a++) {
            if (isa_absent(bq_set_isa(isas[a]), isas[a])) continue;
            OK(bq_qdq(f, x, q, 1, 5, NULL));
            CHECK(!memcmp(q, u, sizeof q), "%s on %s: a tiny negative element fake-quantises to %a, its code to %a",
                  names[k], isas[a], q[0], u[0]);
        }
        bq_format_free(f);
    }
    bq_set_isa("scalar");
}

/* Every ISA and every thread count give the same bits. */
static void test_isa_thread_invariance(void)
{
    size_t rows = 64, cols = 1100, n = rows * cols;
    float *x = malloc(n * 4), *ref = malloc(n * 4), *y = malloc(n * 4);
    make_inputs(x, n, 1, 1);
    for (size_t fi = 0; bq_format_list(fi); fi++) {
        bq_format *f;
        bq_format_parse(bq_format_list(fi), &f);
        for (int r = 0; r < 4; r++) {
            bq_qopts o = {(bq_round)r, 7, 1};
            bq_set_isa("scalar");
            OK(bq_qdq(f, x, ref, rows, cols, &o));
            for (int k = 0; k < 3; k++)
                for (int t = 1; t <= 3; t += 2) {
                    if (isa_absent(bq_set_isa(isas[k]), isas[k])) continue;
                    o.threads = t;
                    OK(bq_qdq(f, x, y, rows, cols, &o));
                    size_t bad = 0;
                    for (size_t i = 0; i < n; i++) bad += !same_bits(y[i], ref[i]);
                    CHECK(bad == 0, "%s round %d on %s with %d threads: %zu values differ from scalar",
                          bq_format_list(fi), r, isas[k], t, bad);
                }
            o.threads = 1;
        }
        bq_format_free(f);
    }
    bq_set_isa("scalar");
    free(x); free(ref); free(y);
}

/* Stochastic rounding: seeded, deterministic, unbiased. */
static void test_stochastic(void)
{
    bq_format *f;
    bq_format_parse("fp4_e2m1", &f);
    size_t n = 200000;
    float *x = malloc(n * 4), *a = malloc(n * 4), *b = malloc(n * 4);
    for (size_t i = 0; i < n; i++) x[i] = 2.3f;  /* between 2 and 3 */
    bq_qopts o = {BQ_ROUND_STOCHASTIC, 1234, 0};
    bq_qdq(f, x, a, 1, n, &o);
    bq_qdq(f, x, b, 1, n, &o);
    CHECK(!memcmp(a, b, n * 4), "same seed gave different bits");
    double mean = 0;
    for (size_t i = 0; i < n; i++) mean += a[i];
    mean /= (double)n;
    CHECK(fabs(mean - 2.3) < 0.01, "stochastic mean %f, expected 2.3", mean);
    o.seed = 99;
    bq_qdq(f, x, b, 1, n, &o);
    CHECK(memcmp(a, b, n * 4) != 0, "different seeds gave identical bits");
    free(x); free(a); free(b);
    bq_format_free(f);
}

/* ---- 4. facts ------------------------------------------------------------ */
static void test_facts(void)
{
    struct { const char *f; double bits, maxv, minnorm; } cases[] = {
        {"fp8_e4m3", 8, 448, 0x1p-6},       {"fp8_e5m2", 8, 57344, 0x1p-14}, {"fp6_e3m2", 6, 28, 0.25},
        {"fp6_e2m3", 6, 7.5, 1},            {"fp4_e2m1", 4, 6, 1},          {"fp16", 16, 65504, 0x1p-14},
        {"mxfp4", 4.25, 6 * 0x1p127, 0x1p-127}, {"mxfp8_e4m3", 8.25, 448 * 0x1p127, 0x1p-133},
        {"nvfp4", 4.5, 3.4028234663852886e38, -1},     {"bfp6_b16", 6.5, -1, -1},      {"bfp8_b32", 8.25, -1, -1},
        {"int4_g128", 4.25, -1, -1},         {"fixed8.4", 8, 128.0 / 16, 1.0 / 16}, {"bme2m3_b16", 6.5, -1, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bq_format *f;
        if (bq_format_parse(cases[i].f, &f)) { CHECK(0, "parse %s", cases[i].f); continue; }
        bq_format_info in;
        bq_format_get_info(f, &in);
        CHECK(in.bits_per_element == cases[i].bits, "%s bits %g", cases[i].f, in.bits_per_element);
        if (cases[i].maxv > 0)
            CHECK(in.max_normal == fmin(cases[i].maxv, 3.4028234663852886e38), "%s max %g", cases[i].f, in.max_normal);
        if (cases[i].minnorm > 0) CHECK(in.min_normal == cases[i].minnorm, "%s min_normal %g", cases[i].f, in.min_normal);
        bq_format_free(f);
    }
}

/* ---- 5. bad names ---------------------------------------------------------- */
static void test_bad_names(void)
{
    const char *bad[] = {"", "mxfp3", "bfp", "bfp1_b16", "bfp6_b0", "bfp6_b99999", "e9m2", "e2m1_b32", "e2m1_b32_sxx",
                         "int1", "int9", "fp8_e4m3:bogus", "fixed8", "log1", "bme4m3_b16_extra", "mxfp4 ", "bfp06_b16",
                         "int4_g0", "e0m3", "e1m0:fn", "bl9_b16", "nvfp4x", "int8_b32_se8m0:bias=x", "bfp6_b16:sat"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bq_format *f = (bq_format *)1;
        bq_status st = bq_format_parse(bad[i], &f);
        CHECK(st == BQ_ERR_FORMAT && f == NULL, "'%s' was accepted", bad[i]);
        CHECK(strlen(bq_last_error()) > 10, "'%s': no message", bad[i]);
    }
    bq_format *f;
    CHECK(bq_format_parse("mxfp4", &f) == BQ_OK, "mxfp4 rejected");
    float x[4] = {1, 2, 3, 4};
    uint8_t p[4];
    CHECK(bq_pack(f, x, 1, 4, NULL, p, 2) == BQ_ERR_ARG, "pack into a short buffer accepted");
    bq_format_free(f);
}

/* The fused power-of-two block path's range of block exponents, solved in closed form
 * (pow2_fused_range), equals the exponents pow2_fused_ok accepts, one by one. */
static void fused_range_one(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return;
    const elem_t *e = &f->el;
    if ((e->kind == EK_MF && e->fast && !e->overflow_inf) || e->kind == EK_INT) {
        int r[2], want[2] = {1, 0};
        pow2_fused_range(e, r);
        for (int E = -400; E <= 400; E++)
            if (pow2_fused_ok(e, E)) {
                if (want[0] > want[1]) want[0] = E;
                want[1] = E;
            }
        int gaps = 0;  /* the accepted exponents must be one interval */
        for (int E = want[0]; E <= want[1]; E++) gaps += !pow2_fused_ok(e, E);
        CHECK(gaps == 0 && want[0] <= want[1] && r[0] == want[0] && r[1] == want[1],
              "%s: fused exponent range [%d, %d], pow2_fused_ok's [%d, %d] (%d gaps)", name, r[0], r[1], want[0], want[1], gaps);
    }
    bq_format_free(f);
}

/* log_bits_elem against its definition by ldexpf, with x's sign (a zero's dropped, as
 * elem_quant and block_elem do): inputs of every exponent (subnormals included), zeros,
 * Infs and NaNs of both signs, grids of any [lo, hi] with clamps down to 2^-160 and up
 * past 2^127 (a block-log block of small values reaches under 2^-126). */
static void test_log_bits_elem(void)
{
    long n = 0, bad = 0;
    for (int i = 0; i < 4000000; i++) {
        uint32_t u = t_rand();
        if (i % 4 == 0) u &= 0x807fffffu;  /* subnormals (and zeros) */
        if (i % 97 == 0) u = (u & 0x80000000u) | (i % 3 ? 0x7f800000u : 0x7fc00001u);  /* Infs, NaNs */
        if (i % 89 == 0) u &= 0x80000000u;
        float x;
        memcpy(&x, &u, 4);
        int lo = -160 + (int)(t_rand() % 200), hi = lo + (int)(t_rand() % 140);
        bq_round r = (bq_round)(t_rand() % 4);
        float a = fabsf(x), want = 0.0f;
        if (a != 0.0f && x == x) {
            int k = hi;
            if (a <= FLT_MAX) {
                k = floor_log2f(a);
                uint32_t m = (uint32_t)((ldexpf(a, -k) - 1.0f) * 0x1p23f);
                k = log_round(k, m, r, 5, (uint64_t)i);
            }
            k = k < lo ? lo : (k > hi ? hi : k);
            want = ldexpf(1.0f, k);
        }
        want = copysignf(want, sgn_of(x));
        float got = log_bits_elem(x, lo, hi, r, 5, (uint64_t)i);
        n++;
        bad += x != x ? got == got : memcmp(&got, &want, 4) != 0;
    }
    CHECK(bad == 0 && n == 4000000, "log_bits_elem: %ld of %ld differ from the ldexpf definition", bad, n);
}

/* grid_by_recip (the CUDA kernels' x * (1/d) for x / d): wherever it says sure, its grid
 * value is elem_quant's of x / d. Quotients at every rounding boundary of the grid
 * (grid values, midpoints) and a few ulps beside, under d of every size, for integer and
 * minifloat grids. */
static void grid_by_recip_one(const char *name)
{
    static const bq_round rs[3] = {BQ_ROUND_RNE, BQ_ROUND_AWAY, BQ_ROUND_ZERO};
    bq_format *f;
    OK(bq_format_parse(name, &f));
    const elem_t *e = &f->el;
    float b[512], gmax;
    int nb = grid_boundaries(f, b, &gmax);  /* each value, and the midpoint to the next one up */
    long sure = 0, wrong = 0, n = 0;
    for (int i = 0; i < 400000; i++) {
        bq_round r = rs[i % 3];
        uint32_t du = (t_rand() & 0x7fffffu) | (uint32_t)(3 + t_rand() % 250) << 23;
        float d, x;
        memcpy(&d, &du, 4);
        x = b[t_rand() % nb] * d;
        uint32_t xu;
        memcpy(&xu, &x, 4);
        xu += t_rand() % 9 - 4;
        memcpy(&x, &xu, 4);
        if (!(x >= 0.0f && x <= FLT_MAX) || !(d >= 0x1p-126f && d <= 0x1p126f)) continue;
        float q, want = fabsf(elem_quant(e, x / d, r, 0, 0));
        n++;
        if (grid_by_recip(e, t_rand() % 2 ? -x : x, 1.0f / d, r, &q)) {
            sure++;
            wrong += !(q == want);
        }
    }
    CHECK(grid_fast(e) && wrong == 0 && sure > n / 4, "grid_by_recip %s: %ld of %ld sure answers differ from x / d (%ld cases)", name,
          wrong, sure, n);
    printf("grid_by_recip %s: %ld cases at rounding boundaries, %ld sure, %ld of them not as x / d rounds\n", name, n, sure, wrong);
    bq_format_free(f);
}

int main(void)
{
    test_vectors();
    test_packed_sizes();
    test_mxfp4_layout();
    for_all_formats(roundtrip_one);
    for_all_formats(fastpack_one);
    test_row_codes();
    /* MX, BFP, BM, scaled, NVFP4, int groups and element formats take the kernel; a
     * count far below means the test compared the reference with itself */
    CHECK(fast_rows_seen >= 30, "only %d formats took the per-ISA packer", fast_rows_seen);
    printf("per-ISA packer: %d formats compared with the scalar reference\n", fast_rows_seen);
    for_all_formats(properties_one);
    for_all_formats(fused_range_one);
    test_bfp_clamp();
    test_scale_overflow();
    test_zero_sign_subnormal();
    test_isa_thread_invariance();
    test_stochastic();
    test_facts();
    test_bad_names();
    /* integer and minifloat grids (e2m1, e4m3, e5m2, e3m2 with subnormals; e4m3 without) */
    const char *grids[] = {"int8_b32_sfp16", "int4_b32_sfp16", "nvfp4", "e4m3_b16_sbf16", "e5m2_b32_sfp16", "e3m2_b32_sfp16",
                           "e4m3_b16_sbf16:nosub"};
    for (size_t i = 0; i < sizeof grids / sizeof *grids; i++) grid_by_recip_one(grids[i]);
    test_log_bits_elem();
    return test_summary("test_formats");
}
