/* Byte-level BPE from a Hugging Face tokenizer.json (GPT-2, LLaMA-3, Qwen style).
 *
 * encode: split out added/special tokens -> pre-tokenise with the regex (PCRE2,
 * Unicode classes) -> map each byte to its printable stand-in -> apply merges
 * by rank -> vocabulary ids. decode reverses the byte mapping. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model.h"
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pre-tokeniser regex (ByteLevel use_regex=true). */
static const char *GPT2_REGEX =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- a string -> int hash table (open addressing) ---- */
typedef struct { char **keys; int *vals; size_t cap, n; } strmap;

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int map_init(strmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16) m->cap *= 2;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    m->n = 0;
    return m->keys && m->vals;
}

static int map_get(const strmap *m, const char *k, size_t len, int *v)
{
    if (!m->cap) return 0;
    for (size_t i = fnv(k, len) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i]) return 0;
        if (strlen(m->keys[i]) == len && !memcmp(m->keys[i], k, len)) { *v = m->vals[i]; return 1; }
    }
}

/* Insert (first value wins); returns 0 on allocation failure. */
static int map_put(strmap *m, const char *k, int v)
{
    size_t len = strlen(k);
    for (size_t i = fnv(k, len) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i]) {
            if (!(m->keys[i] = strdup(k))) return 0;
            m->vals[i] = v;
            m->n++;
            return 1;
        }
        if (!strcmp(m->keys[i], k)) return 1;
    }
}

static void map_free(strmap *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

typedef struct { char *content; int id; } added;

struct bq_tokenizer {
    strmap vocab, merges;
    char **id2tok;         /* id -> token string (byte-level form, or added content) */
    int *is_added;
    int nid;
    added *add;
    int nadd;
    pcre2_code *re;
    char byte2u[256][3];   /* byte -> UTF-8 of its stand-in code point */
    int u2byte[512];       /* stand-in code point -> byte */
};

static void build_byte_map(bq_tokenizer *t)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        int cp = keep ? b : 256 + n++;
        t->u2byte[cp] = b;
        if (cp < 0x80) { t->byte2u[b][0] = (char)cp; t->byte2u[b][1] = 0; }
        else { t->byte2u[b][0] = (char)(0xc0 | (cp >> 6)); t->byte2u[b][1] = (char)(0x80 | (cp & 63)); t->byte2u[b][2] = 0; }
    }
}

void bq_tokenizer_free(bq_tokenizer *t)
{
    if (!t) return;
    map_free(&t->vocab);
    map_free(&t->merges);
    for (int i = 0; i < t->nid; i++) free(t->id2tok[i]);
    free(t->id2tok);
    free(t->is_added);
    for (int i = 0; i < t->nadd; i++) free(t->add[i].content);
    free(t->add);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

/* Which regex the pre-tokeniser uses; NULL + error if unsupported. */
static const char *pretok_regex(cJSON *pt, const char *path, bq_status *st)
{
    cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "ByteLevel")) {
        cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        cJSON *ap = cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space");
        if (cJSON_IsTrue(ap)) { *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: add_prefix_space=true is not supported", path); return NULL; }
        if (ur && !cJSON_IsTrue(ur)) { *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: ByteLevel without a regex is not supported", path); return NULL; }
        return GPT2_REGEX;
    }
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "Sequence")) {
        /* [Split{Regex, Isolated}, ByteLevel{use_regex=false}] as in LLaMA-3 and Qwen2 */
        cJSON *ps = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        cJSON *sp = cJSON_GetArrayItem(ps, 0), *bl = cJSON_GetArrayItem(ps, 1);
        cJSON *pat = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sp, "pattern"), "Regex");
        cJSON *t1 = cJSON_GetObjectItemCaseSensitive(sp, "type"), *t2 = cJSON_GetObjectItemCaseSensitive(bl, "type");
        cJSON *beh = cJSON_GetObjectItemCaseSensitive(sp, "behavior");
        if (cJSON_GetArraySize(ps) == 2 && cJSON_IsString(pat) && cJSON_IsString(t1) && !strcmp(t1->valuestring, "Split") &&
            cJSON_IsString(t2) && !strcmp(t2->valuestring, "ByteLevel") && cJSON_IsString(beh) &&
            !strcmp(beh->valuestring, "Isolated"))
            return pat->valuestring;
    }
    *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: pre_tokenizer is not byte-level BPE (ByteLevel, or Split+ByteLevel)", path);
    return NULL;
}

bq_status bq_tokenizer_load(const char *path, bq_tokenizer **out)
{
    *out = NULL;
    void *js;
    size_t n;
    bq_status st = bq_read_file(path, &js, &n);
    if (st) return st;
    st = tokenizer_parse(js, n, path, out);
    free(js);
    return st;
}

bq_status tokenizer_parse(const char *js, size_t n, const char *path, bq_tokenizer **out)
{
    *out = NULL;
    bq_status st = BQ_OK;
    cJSON *root = cJSON_ParseWithLength(js, n);
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return bq_fail(BQ_ERR_PARSE, "%s: not a JSON object", path); }
    bq_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { cJSON_Delete(root); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    build_byte_map(t);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const char *regex = NULL;
    if (!cJSON_IsObject(model) || !cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vocab) ||
        !cJSON_IsArray(merges))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: only BPE models with a vocab object and a merges list are supported", path);
    else if (norm && !cJSON_IsNull(norm))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: normalizers are not supported", path);
    else regex = pretok_regex(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, &st);
    if (!st) {
        int err;
        PCRE2_SIZE eo;
        t->re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eo, NULL);
        if (!t->re) st = bq_fail(BQ_ERR_PARSE, "%s: pre-tokeniser regex does not compile (offset %zu)", path, (size_t)eo);
        else pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);  /* optional speed-up */
    }
    /* vocabulary: ids must be dense-able and unique */
    cJSON *adds = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int maxid = -1;
    if (!st) {
        for (cJSON *it = vocab->child; it && !st; it = it->next) {
            if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= (1 << 22) || it->valuedouble != (int)it->valuedouble)
                st = bq_fail(BQ_ERR_PARSE, "%s: vocab entry has a bad id", path);
            else if ((int)it->valuedouble > maxid) maxid = (int)it->valuedouble;
        }
        for (cJSON *it = adds ? adds->child : NULL; it && !st; it = it->next) {
            cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id"), *ct = cJSON_GetObjectItemCaseSensitive(it, "content");
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 22) || !cJSON_IsString(ct) || !*ct->valuestring)
                st = bq_fail(BQ_ERR_PARSE, "%s: added token without a valid id and content", path);
            else if ((int)id->valuedouble > maxid) maxid = (int)id->valuedouble;
        }
    }
    if (!st) {
        t->nid = maxid + 1;
        t->id2tok = calloc((size_t)t->nid, sizeof *t->id2tok);
        t->is_added = calloc((size_t)t->nid, sizeof *t->is_added);
        if (!t->id2tok || !t->is_added || !map_init(&t->vocab, (size_t)cJSON_GetArraySize(vocab)) ||
            !map_init(&t->merges, (size_t)cJSON_GetArraySize(merges)))
            st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    for (cJSON *it = st ? NULL : vocab->child; it && !st; it = it->next) {
        int id = (int)it->valuedouble;
        if (t->id2tok[id]) st = bq_fail(BQ_ERR_PARSE, "%s: id %d appears twice in the vocab", path, id);
        else if (!(t->id2tok[id] = strdup(it->string)) || !map_put(&t->vocab, it->string, id))
            st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    int rank = 0;
    for (cJSON *it = st ? NULL : merges->child; it && !st; it = it->next, rank++) {
        char buf[1024];
        if (cJSON_IsString(it)) snprintf(buf, sizeof buf, "%s", it->valuestring);
        else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) && cJSON_IsString(it->child->next))
            snprintf(buf, sizeof buf, "%s %s", it->child->valuestring, it->child->next->valuestring);
        else { st = bq_fail(BQ_ERR_PARSE, "%s: merge %d is neither \"a b\" nor [a, b]", path, rank); break; }
        if (!strchr(buf, ' ')) st = bq_fail(BQ_ERR_PARSE, "%s: merge %d has no separator", path, rank);
        else if (!map_put(&t->merges, buf, rank)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    int na = adds ? cJSON_GetArraySize(adds) : 0;
    if (!st && na) {
        t->add = calloc((size_t)na, sizeof *t->add);
        if (!t->add) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    for (cJSON *it = (st || !adds) ? NULL : adds->child; it && !st; it = it->next) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        const char *ct = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        t->add[t->nadd].id = id;
        if (!(t->add[t->nadd].content = strdup(ct))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        t->nadd++;
        t->is_added[id] = 1;
        if (!t->id2tok[id] && !(t->id2tok[id] = strdup(ct))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(root);
    if (st) { bq_tokenizer_free(t); return st; }
    *out = t;
    return BQ_OK;
}

/* ---- encoding ---- */

typedef struct { int32_t *v; size_t n, cap; } ivec;
static int ipush(ivec *a, int32_t x)
{
    if (a->n == a->cap) {
        size_t c = a->cap ? 2 * a->cap : 256;
        int32_t *p = realloc(a->v, c * sizeof *p);
        if (!p) return 0;
        a->v = p;
        a->cap = c;
    }
    a->v[a->n++] = x;
    return 1;
}

/* Length of the UTF-8 sequence at s[0..left), or 0 if invalid (overlong,
 * surrogate, beyond U+10FFFF, truncated). */
static int utf8_len(const unsigned char *s, size_t left)
{
    unsigned c = s[0];
    int k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (k < 0 || (size_t)k >= left || (k == 1 && c < 0xc2)) return 0;
    uint32_t cp = k ? c & (0x3fu >> k) : c;
    for (int j = 1; j <= k; j++) {
        if ((s[j] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[j] & 0x3f);
    }
    if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k + 1;
}

/* Offset of the first invalid UTF-8 byte, or len if valid. */
static size_t utf8_valid(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        int k = utf8_len(s + i, len - i);
        if (!k) return i;
        i += (size_t)k;
    }
    return len;
}

/* BPE over one pre-token (raw bytes). */
static bq_status bpe_word(const bq_tokenizer *t, const char *w, size_t len, ivec *out)
{
    /* symbols as byte-level strings, kept in one buffer with offsets */
    size_t ns = len;
    char **sym = malloc(ns * sizeof *sym);
    if (!sym) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < ns; i++) sym[i] = strdup(t->byte2u[(unsigned char)w[i]]);
    char buf[4096];
    for (;;) {
        int best = -1, br = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            int r, l = snprintf(buf, sizeof buf, "%s %s", sym[i], sym[i + 1]);
            if (l < (int)sizeof buf && map_get(&t->merges, buf, (size_t)l, &r) && (best < 0 || r < br)) { best = (int)i; br = r; }
        }
        if (best < 0) break;
        /* merge every occurrence of that pair, left to right */
        char *a = strdup(sym[best]), *b = strdup(sym[best + 1]);
        size_t j = 0;
        for (size_t i = 0; i < ns; i++) {
            if (i + 1 < ns && !strcmp(sym[i], a) && !strcmp(sym[i + 1], b)) {
                size_t la = strlen(sym[i]), lb = strlen(sym[i + 1]);
                char *m = malloc(la + lb + 1);
                memcpy(m, sym[i], la);
                memcpy(m + la, sym[i + 1], lb + 1);
                free(sym[i]);
                free(sym[i + 1]);
                sym[j++] = m;
                i++;
            } else {
                sym[j++] = sym[i];
            }
        }
        ns = j;
        free(a);
        free(b);
    }
    bq_status st = BQ_OK;
    for (size_t i = 0; i < ns; i++) {
        int id;
        if (!st && !map_get(&t->vocab, sym[i], strlen(sym[i]), &id))
            st = bq_fail(BQ_ERR_PARSE, "tokenizer: merged symbol '%s' is not in the vocabulary", sym[i]);
        else if (!st && !ipush(out, id)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        free(sym[i]);
    }
    free(sym);
    return st;
}

/* Split with the regex, "Isolated": each match is a piece, and so is any text
 * between matches. Empty matches split nothing; the search then steps over one
 * whole UTF-8 character (never into the middle of one). */
static bq_status encode_plain(const bq_tokenizer *t, const char *s, size_t len, pcre2_match_data *md, ivec *out)
{
    size_t seg = 0, off = 0;  /* seg: start of text not yet encoded; off: where the search resumes */
    bq_status st = BQ_OK;
    while (off < len && !st) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return bq_fail(BQ_ERR_PARSE, "tokenizer: regex match failed (%d)", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] <= ov[0]) {  /* empty match */
            if (ov[0] >= len) break;
            int k = utf8_len((const unsigned char *)s + ov[0], len - ov[0]);
            off = ov[0] + (size_t)(k ? k : 1);
            continue;
        }
        if (ov[0] > seg) st = bpe_word(t, s + seg, ov[0] - seg, out);
        if (!st) st = bpe_word(t, s + ov[0], ov[1] - ov[0], out);
        seg = off = ov[1];
    }
    if (!st && seg < len) st = bpe_word(t, s + seg, len - seg, out);
    return st;
}

bq_status bq_tokenize(const bq_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    size_t bad = utf8_valid((const unsigned char *)text, len);
    if (bad != len) return bq_fail(BQ_ERR_PARSE, "text is not valid UTF-8 (byte offset %zu)", bad);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    ivec out = {0};
    bq_status st = BQ_OK;
    size_t pos = 0;
    while (pos < len && !st) {
        /* the earliest (then longest) added token at or after pos */
        size_t best_at = len, best_len = 0;
        int best_id = -1;
        for (int i = 0; i < t->nadd; i++) {
            const char *hit = memmem(text + pos, len - pos, t->add[i].content, strlen(t->add[i].content));
            if (!hit) continue;
            size_t at = (size_t)(hit - text), l = strlen(t->add[i].content);
            if (at < best_at || (at == best_at && l > best_len)) { best_at = at; best_len = l; best_id = t->add[i].id; }
        }
        st = encode_plain(t, text + pos, best_at - pos, md, &out);
        if (!st && best_id >= 0 && !ipush(&out, best_id)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        pos = best_id >= 0 ? best_at + best_len : len;
    }
    pcre2_match_data_free(md);
    if (st) { free(out.v); return st; }
    *ids = out.v ? out.v : malloc(sizeof(int32_t));
    *n = out.n;
    return BQ_OK;
}

bq_status bq_detokenize(const bq_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len)
{
    size_t cap = 64, l = 0;
    char *s = malloc(cap);
    if (!s) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->nid || !t->id2tok[ids[i]]) {
            free(s);
            return bq_fail(BQ_ERR_ARG, "token id %d is not in the vocabulary", ids[i]);
        }
        const unsigned char *p = (const unsigned char *)t->id2tok[ids[i]];
        size_t pl = strlen((const char *)p);
        if (l + pl + 1 > cap) {
            while (l + pl + 1 > cap) cap *= 2;
            char *ns = realloc(s, cap);
            if (!ns) { free(s); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
            s = ns;
        }
        if (t->is_added[ids[i]]) { memcpy(s + l, p, pl); l += pl; continue; }
        for (size_t j = 0; j < pl;) {  /* each stand-in code point -> its byte */
            int k = utf8_len(p + j, pl - j);
            unsigned cp = k == 1 ? p[j] : k == 2 ? ((p[j] & 0x1fu) << 6) | (p[j + 1] & 0x3fu) : 0xffff;
            j += k ? (size_t)k : 1;
            s[l++] = (char)(cp < 512 ? t->u2byte[cp] : '?');
        }
    }
    s[l] = 0;
    *text = s;
    *len = l;
    return BQ_OK;
}
