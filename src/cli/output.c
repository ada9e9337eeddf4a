/* Output helpers shared by the commands: a growing text buffer, atomic saves,
 * and a small SVG scatter plot (log-scale y, optional dashed reference line). */
#include "cli.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *s; size_t len, cap; int fail; } sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    if (b->fail) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (b->s && b->len + (size_t)k < b->cap) { b->len += (size_t)k; return; }
        size_t nc = (b->cap ? b->cap * 2 : 8192) + (size_t)k;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->fail = 1; return; }
        b->s = ns;
        b->cap = nc;
    }
}

char *svg_scatter(const double *x, const double *y, const char *const *labels, const int *highlight, int n,
                  double ref, const char *title, const char *xlabel, const char *ylabel)
{
    double W = 760, H = 460, L = 70, R = 20, T = 40, B = 60;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]) || y[i] <= 0) continue;
        xmin = fmin(xmin, x[i]); xmax = fmax(xmax, x[i]);
        ymin = fmin(ymin, y[i]); ymax = fmax(ymax, y[i]);
    }
    if (isfinite(ref) && ref > 0) { ymin = fmin(ymin, ref); ymax = fmax(ymax, ref); }
    if (!(xmax >= xmin)) { xmin = 0; xmax = 1; ymin = 1; ymax = 10; }
    xmin = floor(xmin) - 0.5; xmax = ceil(xmax) + 0.5;
    ymin /= 1.05; ymax *= 1.1;
    double ly0 = log(ymin), ly1 = log(ymax);
#define XS(v) (L + ((v) - xmin) / (xmax - xmin) * (W - L - R))
#define YS(v) (T + (ly1 - log(v)) / (ly1 - ly0) * (H - T - B))
    sbuf b = {0};
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H);
    put(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n", L, title);
    put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", L, T, L, H - B);
    double step = xmax - xmin > 16 ? 4 : 1;
    for (double v = ceil(xmin / step) * step; v <= xmax; v += step)
        put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", XS(v), H - B + 16, v);
    put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", (L + W - R) / 2, H - 18, xlabel);
    for (int k = 0; k < 6; k++) {
        double v = exp(ly0 + (ly1 - ly0) * k / 5);
        put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", L - 6, YS(v) + 4, v);
    }
    put(&b, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", (T + H - B) / 2, ylabel);
    if (isfinite(ref) && ref > 0)
        put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"gray\" stroke-dasharray=\"6,4\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" fill=\"gray\">float32 %.4g</text>\n", L, YS(ref), W - R, YS(ref), W - R - 110, YS(ref) - 5, ref);
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]) || y[i] <= 0) continue;
        double px = XS(x[i]), py = YS(y[i]);
        put(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%s\" fill=\"%s\"/>\n", px, py, highlight && highlight[i] ? "4.5" : "3",
            highlight && highlight[i] ? "#d62728" : "#1f77b4");
        if (labels && labels[i] && labels[i][0])
            put(&b, "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-30 %.1f %.1f)\">%s</text>\n", px + 5, py - 4, px + 5, py - 4, labels[i]);
    }
    put(&b, "</svg>\n");
#undef XS
#undef YS
    if (b.fail) { free(b.s); return NULL; }
    return b.s;
}

char *cli_appendf(char *buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(buf ? buf + *len : NULL, buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (buf && *len + (size_t)k < *cap) { *len += (size_t)k; return buf; }
        size_t nc = (*cap ? *cap * 2 : 8192) + (size_t)k;
        char *nb = realloc(buf, nc);
        if (!nb) { free(buf); return NULL; }
        buf = nb;
        *cap = nc;
    }
}

int cli_save(const char *cmd, const char *path, char *buf, size_t len)
{
    if (!buf) return cli_error(cmd, "out of memory");
    bq_status st = bq_write_file_atomic(path, buf, len);
    free(buf);
    return st ? cli_status(cmd, st) : 0;
}

double cli_format_bits(const char *name)
{
    bq_format *f;
    if (bq_format_parse(name, &f)) return NAN;
    bq_format_info in;
    bq_format_get_info(f, &in);
    bq_format_free(f);
    return in.bits_per_element;
}

char *cli_json_quote(const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char *q = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return q;
}
