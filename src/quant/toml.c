/* A strict parser for the TOML subset quantisation configs use:
 *   # comments, blank lines
 *   key = value          key: bare [A-Za-z0-9_-]+ or "basic string"
 *   value: "string" | integer | true | false | { key = scalar, ... }
 * Anything else (tables, arrays, floats, multi-line strings, duplicate keys) is
 * an error naming the file and line. */
#include "quant.h"
#include "strmap.h"
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s, *end, *path;
    int line;
    bq_status st;
} parser;

static int fail(parser *p, const char *what)
{
    if (!p->st) p->st = bq_fail(BQ_ERR_PARSE, "%s:%d: %s", p->path, p->line, what);
    return 0;
}

static void skip_ws(parser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t')) p->s++;
}

/* "basic string" with \" and \\ escapes only; returns malloc'd text. */
static char *string(parser *p)
{
    if (p->s >= p->end || *p->s != '"') { fail(p, "expected a \"string\""); return NULL; }
    p->s++;
    size_t cap = 32, n = 0;
    char *out = malloc(cap);
    if (!out) { fail(p, "out of memory"); return NULL; }
    while (p->s < p->end && *p->s != '"') {
        char c = *p->s++;
        if (c == '\n' || c == '\r') { free(out); fail(p, "unterminated string"); return NULL; }
        if (c == '\\') {
            if (p->s >= p->end || (*p->s != '"' && *p->s != '\\')) { free(out); fail(p, "unsupported escape in string (only \\\" and \\\\)"); return NULL; }
            c = *p->s++;
        }
        if ((unsigned char)c < 0x20) { free(out); fail(p, "control character in string"); return NULL; }
        if (n + 2 > cap) {
            if (cap > (1u << 20)) { free(out); fail(p, "string too long"); return NULL; }
            cap *= 2;
            char *o = realloc(out, cap);
            if (!o) { free(out); fail(p, "out of memory"); return NULL; }
            out = o;
        }
        out[n++] = c;
    }
    if (p->s >= p->end) { free(out); fail(p, "unterminated string"); return NULL; }
    p->s++;
    out[n] = 0;
    return out;
}

static char *key(parser *p)
{
    skip_ws(p);
    if (p->s < p->end && *p->s == '"') return string(p);
    const char *b = p->s;
    while (p->s < p->end && (isalnum((unsigned char)*p->s) || *p->s == '_' || *p->s == '-')) p->s++;
    if (p->s == b) { fail(p, "expected a key"); return NULL; }
    if (p->s - b > 256) { fail(p, "key too long"); return NULL; }
    char *k = strndup(b, (size_t)(p->s - b));
    if (!k) fail(p, "out of memory");
    return k;
}

static int scalar(parser *p, tkv *v)
{
    skip_ws(p);
    if (p->s >= p->end) return fail(p, "expected a value");
    if (*p->s == '"') {
        v->kind = TV_STR;
        return (v->s = string(p)) != NULL;
    }
    if (p->end - p->s >= 4 && !strncmp(p->s, "true", 4)) { v->kind = TV_BOOL; v->i = 1; p->s += 4; return 1; }
    if (p->end - p->s >= 5 && !strncmp(p->s, "false", 5)) { v->kind = TV_BOOL; v->i = 0; p->s += 5; return 1; }
    const char *b = p->s;
    if (*p->s == '-' || *p->s == '+') p->s++;
    while (p->s < p->end && isdigit((unsigned char)*p->s)) p->s++;
    if (p->s == b || !isdigit((unsigned char)p->s[-1])) return fail(p, "expected a string, integer, boolean or { inline table }");
    if (p->s < p->end && (*p->s == '.' || *p->s == 'e' || *p->s == 'E')) return fail(p, "floats are not supported here");
    char buf[32];
    if (p->s - b >= (long)sizeof buf) return fail(p, "integer too long");
    memcpy(buf, b, (size_t)(p->s - b));
    buf[p->s - b] = 0;
    errno = 0;
    v->i = strtoll(buf, NULL, 10);
    if (errno) return fail(p, "integer out of range");
    v->kind = TV_INT;
    return 1;
}

/* Record a key of one table; 0 (and the error) if it is already there. */
static int new_key(parser *p, strmap *keys, const char *k)
{
    int r = strmap_put(keys, k, strlen(k), 0);
    return r > 0 ? 1 : fail(p, r < 0 ? "out of memory" : "duplicate key");
}

/* Append, doubling the array when its length reaches a power of two. */
static int push(parser *p, tkv **items, int *n, tkv *v)
{
    if (*n >= 100000) return fail(p, "too many entries");
    if (!(*n & (*n - 1)) || !*n) {
        tkv *ni = realloc(*items, (size_t)(*n ? 2 * *n : 1) * sizeof *ni);
        if (!ni) return fail(p, "out of memory");
        *items = ni;
    }
    (*items)[(*n)++] = *v;
    return 1;
}

static void free_items(tkv *items, int n)
{
    for (int i = 0; i < n; i++) {
        free(items[i].key);
        free(items[i].s);
        free_items(items[i].items, items[i].nitems);
    }
    free(items);
}

static int table(parser *p, tkv *v, strmap *keys);

static int value(parser *p, tkv *v)
{
    skip_ws(p);
    if (p->s < p->end && *p->s == '{') {
        p->s++;
        v->kind = TV_TABLE;
        strmap keys = {0};
        int ok = table(p, v, &keys);
        strmap_free(&keys);
        return ok;
    }
    return scalar(p, v);
}

static int table(parser *p, tkv *v, strmap *keys)
{
    skip_ws(p);
    if (p->s < p->end && *p->s == '}') { p->s++; return 1; }
    for (;;) {
        tkv e = {0};
        e.line = p->line;
        if (!(e.key = key(p))) return 0;
        skip_ws(p);
        if (p->s >= p->end || *p->s != '=') { free(e.key); return fail(p, "expected '=' in inline table"); }
        p->s++;
        if (!new_key(p, keys, e.key)) { free(e.key); return 0; }
        skip_ws(p);
        if (p->s < p->end && *p->s == '{') { free(e.key); return fail(p, "nested tables are not supported"); }
        if (!scalar(p, &e) || !push(p, &v->items, &v->nitems, &e)) { free(e.key); free(e.s); return 0; }
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') { p->s++; continue; }
        if (p->s < p->end && *p->s == '}') { p->s++; return 1; }
        return fail(p, "expected ',' or '}' in inline table");
    }
}

bq_status toml_parse(const char *src, size_t len, const char *path, tdoc *out)
{
    memset(out, 0, sizeof *out);
    parser p = {src, src + len, path, 1, BQ_OK};
    strmap keys = {0};
    if (memchr(src, 0, len)) return bq_fail(BQ_ERR_PARSE, "%s: contains a NUL byte", path);
    while (p.s < p.end && !p.st) {
        skip_ws(&p);
        if (p.s < p.end && *p.s == '#') while (p.s < p.end && *p.s != '\n') p.s++;
        if (p.s < p.end && *p.s == '\r') p.s++;
        if (p.s >= p.end) break;
        if (*p.s == '\n') { p.s++; p.line++; continue; }
        if (*p.s == '[') { fail(&p, "[tables] are not supported; write \"pattern\" = { w = ..., a = ... }"); break; }
        tkv v = {0};
        v.line = p.line;
        if (!(v.key = key(&p))) break;
        skip_ws(&p);
        if (p.s >= p.end || *p.s != '=') { free(v.key); fail(&p, "expected '=' after the key"); break; }
        p.s++;
        if (!new_key(&p, &keys, v.key)) { free(v.key); break; }
        if (!value(&p, &v) || !push(&p, &out->items, &out->n, &v)) {
            free(v.key);
            free(v.s);
            free_items(v.items, v.nitems);
            break;
        }
        skip_ws(&p);
        if (p.s < p.end && *p.s == '#') while (p.s < p.end && *p.s != '\n') p.s++;
        if (p.s < p.end && *p.s == '\r') p.s++;
        if (p.s < p.end && *p.s != '\n') { fail(&p, "unexpected text after the value"); break; }
    }
    strmap_free(&keys);
    if (p.st) { toml_free(out); return p.st; }
    return BQ_OK;
}

void toml_free(tdoc *d)
{
    free_items(d->items, d->n);
    memset(d, 0, sizeof *d);
}
