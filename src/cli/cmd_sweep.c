/* blockq sweep: perplexity for a list of W/A format settings, written as a
 * Markdown table, JSON and an SVG plot of perplexity against bits/element. */
#include "cli.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The seed paper's grid (Zhang et al. 2023, Table 2 families) plus MX / NVFP4 / int baselines.
 * "W" means the same format for weights and activations; "W/A" sets them apart. */
static const char *DEFAULT_GRID =
    "fp32,fixed8.4,fixed6.3,fp8_e4m3:sat,fp6_e3m2,bfp8_b16,bfp6_b16,bfp5_b16,bfp4_b16,bme4m3_b16,bme2m3_b16,"
    "bl8_b16,bl6_b16,mxint8,mxfp8_e4m3,mxfp6_e2m3,mxfp4,nvfp4,int8_row,int4_g128/fp32";

typedef struct { char w[64], a[64]; double wbits, abits, ppl, seconds; int ok; char err[256]; } point;

static int split_setting(const char *s, point *p)
{
    const char *slash = strchr(s, '/');
    size_t lw = slash ? (size_t)(slash - s) : strlen(s);
    if (lw == 0 || lw >= sizeof p->w || (slash && strlen(slash + 1) >= sizeof p->a) || (slash && !slash[1])) return 0;
    memcpy(p->w, s, lw);
    p->w[lw] = 0;
    snprintf(p->a, sizeof p->a, "%s", slash ? slash + 1 : p->w);
    return 1;
}

static double bits_of(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return NAN;
    bq_format_info in;
    bq_format_get_info(f, &in);
    bq_format_free(f);
    return in.bits_per_element;
}

static char *append(char *buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#include <stdarg.h>
static char *append(char *buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(buf ? buf + *len : NULL, buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (buf && *len + (size_t)k < *cap) { *len += (size_t)k; return buf; }
        size_t nc = (*cap ? *cap * 2 : 4096) + (size_t)k;
        char *nb = realloc(buf, nc);
        if (!nb) { free(buf); return NULL; }
        buf = nb;
        *cap = nc;
    }
}

static int write_out(const char *path, char *buf, size_t len)
{
    if (!buf) return cli_error("sweep", "out of memory");
    bq_status st = bq_write_file_atomic(path, buf, len);
    free(buf);
    return st ? cli_status("sweep", st) : 0;
}

/* SVG: x = weight bits/element, y = perplexity (log scale), fp32 as a dashed line. */
static char *svg_plot(const point *p, int n, double ref, const char *title)
{
    double W = 760, H = 460, L = 70, R = 20, T = 40, B = 60, xmin = 2, xmax = 34, ymin = 1e30, ymax = 0;
    for (int i = 0; i < n; i++)
        if (p[i].ok && isfinite(p[i].ppl)) { ymin = fmin(ymin, p[i].ppl); ymax = fmax(ymax, p[i].ppl); }
    if (!(ymax > 0)) ymin = 1, ymax = 10;
    ymin = ymin / 1.1;
    ymax = ymax * 1.1;
    double ly0 = log(ymin), ly1 = log(ymax);
#define XS(v) (L + ((v) - xmin) / (xmax - xmin) * (W - L - R))
#define YS(v) (T + (ly1 - log(v)) / (ly1 - ly0) * (H - T - B))
    size_t len = 0, cap = 0;
    char *s = NULL;
    s = append(s, &len, &cap, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H);
    if (!s) return NULL;
    s = append(s, &len, &cap, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n", L, title);
    s = append(s, &len, &cap, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    s = append(s, &len, &cap, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, T, L, H - B);
    for (int b = 4; b <= 32; b += 4)
        s = append(s, &len, &cap, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", XS(b), H - B + 16, b);
    s = append(s, &len, &cap, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">weight bits per element (incl. shared scales)</text>\n", (L + W - R) / 2, H - 18);
    for (int k = 0; k < 6; k++) {
        double v = exp(ly0 + (ly1 - ly0) * k / 5);
        s = append(s, &len, &cap, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", L - 6, YS(v) + 4, v);
    }
    s = append(s, &len, &cap, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">perplexity (log scale)</text>\n", (T + H - B) / 2);
    if (isfinite(ref) && ref > ymin && ref < ymax)
        s = append(s, &len, &cap, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"gray\" stroke-dasharray=\"6,4\"/>\n"
                   "<text x=\"%.1f\" y=\"%.1f\" fill=\"gray\">float32 %.2f</text>\n", L, YS(ref), W - R, YS(ref), W - R - 110, YS(ref) - 5, ref);
    for (int i = 0; i < n && s; i++) {
        if (!p[i].ok || !isfinite(p[i].ppl) || !isfinite(p[i].wbits)) continue;
        double x = XS(fmin(fmax(p[i].wbits, xmin), xmax)), y = YS(p[i].ppl);
        s = append(s, &len, &cap, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#1f77b4\"/>\n", x, y);
        s = append(s, &len, &cap, "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-30 %.1f %.1f)\">%s%s%s</text>\n", x + 5, y - 4, x + 5,
                   y - 4, p[i].w, strcmp(p[i].w, p[i].a) ? "/" : "", strcmp(p[i].w, p[i].a) ? p[i].a : "");
    }
    if (s) s = append(s, &len, &cap, "</svg>\n");
#undef XS
#undef YS
    return s;
}

int cmd_sweep(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *list = DEFAULT_GRID, *out = "sweep";
    int ctx = 512, chunks = 0, threads = 0;
    bq_round round = BQ_ROUND_RNE;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t x;
        if (!strcmp(s, "--model") && v) model = argv[++i];
        else if (!strcmp(s, "--text") && v) text = argv[++i];
        else if (!strcmp(s, "--formats") && v) list = argv[++i];
        else if (!strcmp(s, "--out") && v) out = argv[++i];
        else if (!strcmp(s, "--round") && v) { if (!parse_round(argv[++i], &round)) return cli_error("sweep", "bad --round '%s'", v); }
        else if (!strcmp(s, "--ctx") && v) { if (!parse_u64(argv[++i], &x) || x < 2 || x > (1 << 20)) return cli_error("sweep", "bad --ctx '%s'", v); ctx = (int)x; }
        else if (!strcmp(s, "--chunks") && v) { if (!parse_u64(argv[++i], &x) || x < 1 || x > (1u << 30)) return cli_error("sweep", "bad --chunks '%s'", v); chunks = (int)x; }
        else if (!strcmp(s, "--threads") && v) { if (!parse_u64(argv[++i], &x) || x > 256) return cli_error("sweep", "bad --threads '%s'", v); threads = (int)x; }
        else return cli_error("sweep", "unknown or incomplete option '%s'", s);
    }
    if (!model || !text)
        return cli_error("sweep", "usage: blockq sweep --model DIR --text FILE [--formats W[/A],...] [--ctx S] [--chunks N] [--round MODE] [--out PREFIX]");
    bq_set_threads(threads);
    /* parse and check the whole list before any long work */
    int n = 1;
    for (const char *c = list; *c; c++) n += *c == ',';
    point *pts = calloc((size_t)n, sizeof *pts);
    char *copy = strdup(list);
    if (!pts || !copy) { free(pts); free(copy); return cli_error("sweep", "out of memory"); }
    int np = 0, rc = 0;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        if (!split_setting(tok, &pts[np])) { rc = cli_error("sweep", "bad setting '%s': expected FORMAT or W/A", tok); break; }
        pts[np].wbits = bits_of(pts[np].w);
        pts[np].abits = bits_of(pts[np].a);
        if (isnan(pts[np].wbits) || isnan(pts[np].abits)) { rc = cli_status("sweep", BQ_ERR_FORMAT); break; }
        np++;
    }
    free(copy);
    void *txt = NULL;
    size_t tlen, nids = 0;
    int32_t *ids = NULL;
    bq_tokenizer *tk = NULL;
    char tpath[4200];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", model);
    bq_status st;
    if (!rc && ((st = bq_read_file(text, &txt, &tlen)) || (st = bq_tokenizer_load(tpath, &tk)) ||
                (st = bq_tokenize(tk, txt, tlen, &ids, &nids))))
        rc = cli_status("sweep", st);
    double ref = NAN;
    for (int i = 0; i < np && !rc; i++) {
        point *p = &pts[i];
        bq_model *m = NULL;
        bq_qconfig *q = NULL;
        st = bq_model_load(model, &m);
        if (!st) st = bq_qconfig_new(&q);
        if (!st && strcmp(p->w, "fp32")) st = bq_qconfig_set(q, "wq", p->w);
        if (!st && strcmp(p->a, "fp32")) st = bq_qconfig_set(q, "aq", p->a);
        if (!st) { bq_qconfig_set_round(q, round, 0); st = bq_model_quantize(m, q, 0); }
        bq_ppl_opts o = {.ctx = ctx, .chunks = chunks, .threads = threads};
        bq_ppl_result r;
        if (!st) st = bq_perplexity(m, ids, nids, &o, &r);
        if (st) {
            snprintf(p->err, sizeof p->err, "%s", bq_last_error());
            p->ppl = NAN;
            if (st == BQ_ERR_NOMEM || st == BQ_ERR_IO) rc = cli_status("sweep", st);
        } else {
            p->ok = 1;
            p->ppl = r.ppl;
            p->seconds = r.seconds;
            if (!strcmp(p->w, "fp32") && !strcmp(p->a, "fp32")) ref = r.ppl;
        }
        fprintf(stderr, "sweep %d/%d  W %-14s A %-14s ppl %s%.4f (%.1f s)%s%s\n", i + 1, np, p->w, p->a, p->ok ? "" : "failed ",
                p->ok ? p->ppl : 0.0, p->seconds, p->ok ? "" : ": ", p->err);
        bq_qconfig_free(q);
        bq_model_free(m);
    }
    if (!rc) {
        char path[4200], title[300];
        size_t len = 0, cap = 0;
        char *md = NULL;
        md = append(md, &len, &cap, "| W format | A format | W bits/el | A bits/el | perplexity | vs float32 |\n|---|---|---|---|---|---|\n");
        for (int i = 0; i < np && md; i++) {
            point *p = &pts[i];
            if (!p->ok) { md = append(md, &len, &cap, "| %s | %s | %.3f | %.3f | failed: %s | |\n", p->w, p->a, p->wbits, p->abits, p->err); continue; }
            md = append(md, &len, &cap, "| %s | %s | %.3f | %.3f | %.3f | %+.2f%% |\n", p->w, p->a, p->wbits, p->abits, p->ppl,
                        isfinite(ref) ? 100.0 * (p->ppl / ref - 1.0) : NAN);
        }
        snprintf(path, sizeof path, "%s.md", out);
        if ((rc = write_out(path, md, len))) goto done;
        len = cap = 0;
        char *js = NULL;
        js = append(js, &len, &cap, "{\"model\": \"%s\", \"text\": \"%s\", \"ctx\": %d, \"chunks\": %d, \"points\": [\n", model, text, ctx, chunks);
        for (int i = 0; i < np && js; i++) {
            point *p = &pts[i];
            js = append(js, &len, &cap, "  {\"w\": \"%s\", \"a\": \"%s\", \"w_bits\": %.4f, \"a_bits\": %.4f, ", p->w, p->a, p->wbits, p->abits);
            if (p->ok) js = append(js, &len, &cap, "\"ppl\": %.6f, \"seconds\": %.3f}%s\n", p->ppl, p->seconds, i + 1 < np ? "," : "");
            else js = append(js, &len, &cap, "\"ppl\": null, \"error\": \"%s\"}%s\n", "see the table", i + 1 < np ? "," : "");
        }
        if (js) js = append(js, &len, &cap, "]}\n");
        snprintf(path, sizeof path, "%s.json", out);
        if ((rc = write_out(path, js, len))) goto done;
        snprintf(title, sizeof title, "Perplexity vs weight bits: %s, ctx %d%s", model, ctx, chunks ? " (first windows)" : "");
        char *svg = svg_plot(pts, np, ref, title);
        snprintf(path, sizeof path, "%s.svg", out);
        rc = write_out(path, svg, svg ? strlen(svg) : 0);
        if (!rc) printf("wrote %s.md, %s.json, %s.svg\n", out, out, out);
    }
done:
    free(pts);
    free(txt);
    free(ids);
    bq_tokenizer_free(tk);
    return rc;
}
