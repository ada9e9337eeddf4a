/* Byte-level BPE from a Hugging Face tokenizer.json (GPT-2, LLaMA-3, Qwen style).
 *
 * encode: split out added/special tokens (one Aho-Corasick pass) -> pre-tokenise
 * with the regex (PCRE2, Unicode classes) -> map each byte to its printable
 * stand-in -> apply merges by rank (a heap over a linked list of symbols, as the
 * Hugging Face tokenizers do: O(n log n) in the word's length) -> vocabulary ids.
 * decode reverses the byte mapping.
 *
 * The file is validated once, here, the way Hugging Face's loader does: every
 * merge's parts and result must be in the vocabulary, ids and tokens unique,
 * and options blockq does not implement are refused by name. Writers (GGUF)
 * take the tokenizer from this parse, never from the raw JSON. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model.h"
#include "strmap.h"
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's pre-tokeniser regex (ByteLevel use_regex=true). */
static const char *GPT2_REGEX =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct { char *content; size_t len; int id, special; } added;

/* Aho-Corasick automaton over the added tokens' contents, reversed: scanning the
 * text backwards, the state at byte i names the longest added token starting at i. */
typedef struct {
    int32_t *first, *next, *fail, *out; /* per node: first child, next sibling, failure link, longest token (-1) */
    uint8_t *byte;                      /* the byte on the edge into the node */
    int n;
    size_t maxlen;
} acauto;

struct bq_tokenizer {
    strmap vocab;          /* byte-level token -> id */
    strmap merges;         /* (left id, right id) as 8 bytes -> rank << 32 | merged id */
    int32_t (*merge_ids)[2]; /* by rank: the pair, for writers */
    int nmerges;
    char **vstr;           /* id -> its vocabulary string (byte-level form), or NULL */
    char **id2tok;         /* id -> what it decodes to: an added token's content, else vstr (borrowed) */
    int *is_added;         /* 0, 1 added, 2 added and special */
    int nid;
    added *add;
    int nadd;
    acauto ac;
    int ignore_merges;
    pcre2_code *re;
    char *regex;           /* the pre-tokeniser's regex (NULL: GPT-2's, as ByteLevel) */
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

static void ac_free(acauto *a)
{
    free(a->first); free(a->next); free(a->fail); free(a->out); free(a->byte);
    memset(a, 0, sizeof *a);
}

void bq_tokenizer_free(bq_tokenizer *t)
{
    if (!t) return;
    strmap_free(&t->vocab);
    strmap_free(&t->merges);
    free(t->merge_ids);
    for (int i = 0; t->vstr && i < t->nid; i++) free(t->vstr[i]);
    free(t->vstr);
    free(t->id2tok);
    free(t->is_added);
    for (int i = 0; i < t->nadd; i++) free(t->add[i].content);
    free(t->add);
    ac_free(&t->ac);
    if (t->re) pcre2_code_free(t->re);
    free(t->regex);
    free(t);
}

/* ---- the added-token automaton ---- */

static int ac_child(const acauto *a, int u, uint8_t c)
{
    for (int v = a->first[u]; v >= 0; v = a->next[v])
        if (a->byte[v] == c) return v;
    return -1;
}

static int ac_add_node(acauto *a, int parent, uint8_t c)
{
    int v = a->n++;
    a->first[v] = -1;
    a->out[v] = -1;
    a->fail[v] = 0;
    a->byte[v] = c;
    a->next[v] = a->first[parent];
    a->first[parent] = v;
    return v;
}

/* Build over the added tokens; the trie holds at most sum(len) + 1 nodes. */
static int ac_build(acauto *a, const added *add, int nadd)
{
    size_t cap = 1;
    for (int i = 0; i < nadd; i++) cap += add[i].len;
    a->first = malloc(cap * sizeof *a->first);
    a->next = malloc(cap * sizeof *a->next);
    a->fail = malloc(cap * sizeof *a->fail);
    a->out = malloc(cap * sizeof *a->out);
    a->byte = malloc(cap);
    if (!a->first || !a->next || !a->fail || !a->out || !a->byte) return 0;
    a->n = 1;  /* the root */
    a->first[0] = a->next[0] = a->out[0] = -1;
    a->fail[0] = 0;
    a->byte[0] = 0;
    for (int i = 0; i < nadd; i++) {
        int u = 0;
        for (size_t k = add[i].len; k-- > 0;) {  /* reversed */
            uint8_t c = (uint8_t)add[i].content[k];
            int v = ac_child(a, u, c);
            u = v >= 0 ? v : ac_add_node(a, u, c);
        }
        a->out[u] = i;
        if (add[i].len > a->maxlen) a->maxlen = add[i].len;
    }
    /* breadth-first: failure links, and each node's longest token among its suffixes */
    int *queue = malloc((size_t)a->n * sizeof *queue), qh = 0, qt = 0;
    if (!queue) return 0;
    for (int v = a->first[0]; v >= 0; v = a->next[v]) queue[qt++] = v;
    while (qh < qt) {
        int u = queue[qh++];
        for (int v = a->first[u]; v >= 0; v = a->next[v]) {
            int f = a->fail[u], w;
            while ((w = ac_child(a, f, a->byte[v])) < 0 && f) f = a->fail[f];
            a->fail[v] = w >= 0 && w != v ? w : 0;
            if (a->out[v] < 0) a->out[v] = a->out[a->fail[v]];
            queue[qt++] = v;
        }
    }
    free(queue);
    return 1;
}

/* best[i - from] = the longest added token starting at byte i, for i in [from, to). */
static void ac_scan(const acauto *a, const char *s, size_t len, size_t from, size_t to, int32_t *best)
{
    size_t start = len - to > a->maxlen ? to + a->maxlen : len;  /* far enough back for every token */
    int u = 0;
    for (size_t i = start; i-- > from;) {
        uint8_t c = (uint8_t)s[i];
        int v;
        while ((v = ac_child(a, u, c)) < 0 && u) u = a->fail[u];
        u = v >= 0 ? v : 0;
        if (i < to) best[i - from] = a->out[u];
    }
}

/* ---- loading ---- */

/* Which regex the pre-tokeniser uses; NULL + error if unsupported. *bytelevel: GPT-2's. */
static const char *pretok_regex(cJSON *pt, const char *path, int *bytelevel, bq_status *st)
{
    cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    *bytelevel = 0;
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "ByteLevel")) {
        cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        cJSON *ap = cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space");
        if (cJSON_IsTrue(ap)) { *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: add_prefix_space=true is not supported", path); return NULL; }
        if (ur && !cJSON_IsTrue(ur)) { *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: ByteLevel without a regex is not supported", path); return NULL; }
        *bytelevel = 1;
        return GPT2_REGEX;
    }
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "Sequence")) {
        /* [Split{Regex, Isolated}, ByteLevel{use_regex=false}] as in LLaMA-3 and Qwen2 */
        cJSON *ps = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        cJSON *sp = cJSON_GetArrayItem(ps, 0), *bl = cJSON_GetArrayItem(ps, 1);
        cJSON *pat = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sp, "pattern"), "Regex");
        cJSON *t1 = cJSON_GetObjectItemCaseSensitive(sp, "type"), *t2 = cJSON_GetObjectItemCaseSensitive(bl, "type");
        cJSON *beh = cJSON_GetObjectItemCaseSensitive(sp, "behavior"), *inv = cJSON_GetObjectItemCaseSensitive(sp, "invert");
        cJSON *ap = cJSON_GetObjectItemCaseSensitive(bl, "add_prefix_space"), *ur = cJSON_GetObjectItemCaseSensitive(bl, "use_regex");
        if (cJSON_GetArraySize(ps) == 2 && cJSON_IsString(pat) && cJSON_IsString(t1) && !strcmp(t1->valuestring, "Split") &&
            cJSON_IsString(t2) && !strcmp(t2->valuestring, "ByteLevel") && cJSON_IsString(beh) &&
            !strcmp(beh->valuestring, "Isolated") && !cJSON_IsTrue(inv) && !cJSON_IsTrue(ap) && !cJSON_IsTrue(ur))
            return pat->valuestring;
    }
    *st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: pre_tokenizer is not byte-level BPE (ByteLevel, or Split+ByteLevel)", path);
    return NULL;
}

/* BPE model options blockq does not implement must be absent or neutral. */
static bq_status check_bpe_options(cJSON *model, const char *path, int *ignore_merges)
{
    static const char *const empty_str[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(model, empty_str[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !*v->valuestring))
            return bq_fail(BQ_ERR_UNSUPPORTED, "%s: BPE '%s' is not supported", path, empty_str[i]);
    }
    cJSON *d = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (d && !cJSON_IsNull(d) && !(cJSON_IsNumber(d) && d->valuedouble == 0))
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", path);
    static const char *const bools[] = {"byte_fallback", "ignore_merges", "fuse_unk"};
    for (size_t i = 0; i < 3; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(model, bools[i]);
        if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v)) return bq_fail(BQ_ERR_PARSE, "%s: BPE '%s' must be true or false", path, bools[i]);
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return bq_fail(BQ_ERR_UNSUPPORTED, "%s: BPE byte_fallback is not supported", path);
    *ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    return BQ_OK;
}

static int valid_id(const cJSON *v) { return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < (1 << 22) && v->valuedouble == (int)v->valuedouble; }

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

static bq_status load_vocab(bq_tokenizer *t, cJSON *vocab, cJSON *adds, const char *path)
{
    int maxid = -1;
    for (cJSON *it = vocab->child; it; it = it->next) {
        if (!valid_id(it)) return bq_fail(BQ_ERR_PARSE, "%s: vocab entry has a bad id (integers in [0, 2^22))", path);
        if ((int)it->valuedouble > maxid) maxid = (int)it->valuedouble;
    }
    int na = 0;
    for (cJSON *it = adds ? adds->child : NULL; it; it = it->next, na++) {
        cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id"), *ct = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!valid_id(id) || !cJSON_IsString(ct) || !*ct->valuestring)
            return bq_fail(BQ_ERR_PARSE, "%s: added token %d has no valid id and content", path, na);
        if (strlen(ct->valuestring) > 65536) return bq_fail(BQ_ERR_UNSUPPORTED, "%s: added token %d is longer than 64 KiB", path, na);
        static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
        for (int k = 0; k < 3; k++)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, flags[k])))
                return bq_fail(BQ_ERR_UNSUPPORTED, "%s: added token %d: %s=true is not supported", path, na, flags[k]);
        if ((int)id->valuedouble > maxid) maxid = (int)id->valuedouble;
    }
    if (adds && !cJSON_IsNull(adds) && !cJSON_IsArray(adds)) return bq_fail(BQ_ERR_PARSE, "%s: added_tokens is not a list", path);
    t->nid = maxid + 1;
    t->id2tok = calloc((size_t)t->nid + 1, sizeof *t->id2tok);
    t->vstr = calloc((size_t)t->nid + 1, sizeof *t->vstr);
    t->is_added = calloc((size_t)t->nid + 1, sizeof *t->is_added);
    t->add = calloc((size_t)na + 1, sizeof *t->add);
    if (!t->id2tok || !t->vstr || !t->is_added || !t->add || !strmap_init(&t->vocab, (size_t)t->nid))
        return bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (cJSON *it = vocab->child; it; it = it->next) {
        int id = (int)it->valuedouble, r;
        if (t->vstr[id]) return bq_fail(BQ_ERR_PARSE, "%s: id %d appears twice in the vocab", path, id);
        if (!(t->vstr[id] = t->id2tok[id] = strdup(it->string)) || (r = strmap_put(&t->vocab, it->string, strlen(it->string), id)) < 0)
            return bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (!r) return bq_fail(BQ_ERR_PARSE, "%s: token '%.60s' appears twice in the vocab", path, it->string);
    }
    strmap seen = {0};
    bq_status st = BQ_OK;
    for (cJSON *it = adds ? adds->child : NULL; it && !st; it = it->next) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble, r;
        const char *ct = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        added *a = &t->add[t->nadd];
        if (t->is_added[id]) { st = bq_fail(BQ_ERR_PARSE, "%s: two added tokens have id %d", path, id); break; }
        if ((r = strmap_put(&seen, ct, strlen(ct), id)) <= 0) {
            st = r < 0 ? bq_fail(BQ_ERR_NOMEM, "out of memory") : bq_fail(BQ_ERR_PARSE, "%s: added token '%.60s' appears twice", path, ct);
            break;
        }
        a->id = id;
        a->len = strlen(ct);
        a->special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
        if (!(a->content = strdup(ct))) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        t->nadd++;
        t->is_added[id] = 1 + a->special;
        t->id2tok[id] = a->content;  /* decodes to its content, as Hugging Face's decoder does */
    }
    strmap_free(&seen);
    if (!st && t->nadd && !ac_build(&t->ac, t->add, t->nadd)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    return st;
}

static int vocab_id(const bq_tokenizer *t, const char *s, size_t len)
{
    int64_t v;
    return strmap_get(&t->vocab, s, len, &v) ? (int)v : -1;
}

/* Merges as Hugging Face reads them: "a b" (exactly one space) or [a, b]; both
 * parts and their concatenation in the vocabulary; each pair once. */
static bq_status load_merges(bq_tokenizer *t, cJSON *merges, const char *path)
{
    int n = cJSON_GetArraySize(merges);
    t->merge_ids = malloc(((size_t)n + 1) * sizeof *t->merge_ids);
    if (!t->merge_ids || !strmap_init(&t->merges, (size_t)n)) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    char *buf = NULL;
    size_t cap = 0;
    bq_status st = BQ_OK;
    int rank = 0;
    for (cJSON *it = merges->child; it && !st; it = it->next, rank++) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) { st = bq_fail(BQ_ERR_PARSE, "%s: merge %d is not two tokens separated by one space", path, rank); break; }
            a = it->valuestring; la = (size_t)(sp - a); b = sp + 1; lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) && cJSON_IsString(it->child->next)) {
            a = it->child->valuestring; la = strlen(a); b = it->child->next->valuestring; lb = strlen(b);
        } else {
            st = bq_fail(BQ_ERR_PARSE, "%s: merge %d is neither \"a b\" nor [a, b]", path, rank);
            break;
        }
        if (la + lb + 1 > cap) {
            cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, cap);
            if (!nb) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
            buf = nb;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ids[2] = {vocab_id(t, a, la), vocab_id(t, b, lb)};
        int merged = vocab_id(t, buf, la + lb), r;
        if (ids[0] < 0 || ids[1] < 0 || merged < 0) {
            st = bq_fail(BQ_ERR_PARSE, "%s: merge %d: '%.*s' is not in the vocabulary", path, rank,
                         ids[0] < 0 ? (int)(la > 60 ? 60 : la) : ids[1] < 0 ? (int)(lb > 60 ? 60 : lb) : (int)(la + lb > 60 ? 60 : la + lb),
                         ids[0] < 0 ? a : ids[1] < 0 ? b : buf);
            break;
        }
        if ((r = strmap_put(&t->merges, (const char *)ids, sizeof ids, (int64_t)rank << 32 | (uint32_t)merged)) <= 0)
            st = r < 0 ? bq_fail(BQ_ERR_NOMEM, "out of memory") : bq_fail(BQ_ERR_PARSE, "%s: merge %d repeats an earlier merge", path, rank);
        t->merge_ids[rank][0] = ids[0];
        t->merge_ids[rank][1] = ids[1];
    }
    free(buf);
    t->nmerges = rank;
    return st;
}

bq_status tokenizer_parse(const char *js, size_t n, const char *path, bq_tokenizer **out)
{
    *out = NULL;
    bq_status st = BQ_OK;
    cJSON *root = cJSON_ParseWithLength(js, n);
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return bq_fail(BQ_ERR_PARSE, "%s: not a JSON object", path); }
    if ((st = json_unique_keys(root, path))) { cJSON_Delete(root); return st; }
    bq_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { cJSON_Delete(root); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    build_byte_map(t);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const char *regex = NULL;
    int bytelevel = 0;
    if (!cJSON_IsObject(model) || !cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vocab) ||
        !cJSON_IsArray(merges))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: only BPE models with a vocab object and a merges list are supported", path);
    else if (norm && !cJSON_IsNull(norm))
        st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: normalizers are not supported", path);
    else if (!(st = check_bpe_options(model, path, &t->ignore_merges)))
        regex = pretok_regex(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, &bytelevel, &st);
    if (!st) {
        int err;
        PCRE2_SIZE eo;
        t->re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eo, NULL);
        if (!t->re) st = bq_fail(BQ_ERR_PARSE, "%s: pre-tokeniser regex does not compile (offset %zu)", path, (size_t)eo);
        else pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);  /* optional speed-up */
        if (!st && !bytelevel && !(t->regex = strdup(regex))) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    if (!st) st = load_vocab(t, vocab, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path);
    if (!st) st = load_merges(t, merges, path);
    cJSON_Delete(root);
    if (st) { bq_tokenizer_free(t); return st; }
    *out = t;
    return BQ_OK;
}

/* ---- what writers need ---- */

int tokenizer_size(const bq_tokenizer *t) { return t->nid; }

const char *tokenizer_token(const bq_tokenizer *t, int id, int *kind)
{
    *kind = id >= 0 && id < t->nid && t->id2tok[id] ? 1 + t->is_added[id] : 0;
    return *kind ? t->id2tok[id] : NULL;
}

int tokenizer_nmerges(const bq_tokenizer *t) { return t->nmerges; }

void tokenizer_merge(const bq_tokenizer *t, int rank, const char **a, const char **b)
{
    *a = t->vstr[t->merge_ids[rank][0]];
    *b = t->vstr[t->merge_ids[rank][1]];
}

const char *tokenizer_vocab_string(const bq_tokenizer *t, int id) { return id >= 0 && id < t->nid ? t->vstr[id] : NULL; }

const char *tokenizer_regex(const bq_tokenizer *t) { return t->regex; }

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

/* A min-heap of candidate merges, rank << 32 | position: lowest rank first,
 * then leftmost, as Hugging Face's word merging pops them. */
typedef struct { uint64_t *v; size_t n; } heap;

static void heap_push(heap *h, uint64_t x)
{
    size_t i = h->n++;
    while (i && h->v[(i - 1) / 2] > x) { h->v[i] = h->v[(i - 1) / 2]; i = (i - 1) / 2; }
    h->v[i] = x;
}

static uint64_t heap_pop(heap *h)
{
    uint64_t top = h->v[0], x = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->v[c + 1] < h->v[c]) c++;
        if (h->v[c] >= x) break;
        h->v[i] = h->v[c];
        i = c;
    }
    h->v[i] = x;
    return top;
}

/* The merge of two adjacent symbols, if any: its rank and result. */
static int merge_of(const bq_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *merged)
{
    int32_t key[2] = {a, b};
    int64_t v;
    if (a < 0 || b < 0 || !strmap_get(&t->merges, (const char *)key, sizeof key, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *merged = (int32_t)(uint32_t)v;
    return 1;
}

/* Queue the pair starting at symbol i, if it merges. */
static void consider(const bq_tokenizer *t, heap *h, const int32_t *id, const int32_t *next, int32_t i)
{
    uint32_t r;
    int32_t m;
    if (i >= 0 && next[i] >= 0 && merge_of(t, id[i], id[next[i]], &r, &m)) heap_push(h, (uint64_t)r << 32 | (uint32_t)i);
}

/* BPE over one pre-token (raw bytes): symbols in a linked list, candidate merges
 * in a heap; a popped candidate whose pair has since changed is skipped. */
static bq_status bpe_word(const bq_tokenizer *t, const char *w, size_t len, ivec *out)
{
    if (len > INT32_MAX / 4) return bq_fail(BQ_ERR_ARG, "tokenizer: a word of %zu bytes is too long", len);
    if (t->ignore_merges) {  /* a word that is a token is taken whole */
        char *bl = malloc(2 * len + 1);
        if (!bl) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        size_t k = 0;
        for (size_t i = 0; i < len; i++)
            for (const char *c = t->byte2u[(unsigned char)w[i]]; *c; c++) bl[k++] = *c;
        int id = vocab_id(t, bl, k);
        free(bl);
        if (id >= 0) return ipush(out, id) ? BQ_OK : bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    int32_t n = (int32_t)len, *id = malloc(len * sizeof *id), *prev = malloc(len * sizeof *prev), *next = malloc(len * sizeof *next);
    heap h = {malloc(2 * len * sizeof *h.v), 0};  /* n pairs, plus at most one net push per merge */
    bq_status st = BQ_OK;
    if (!id || !prev || !next || !h.v) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < n && !st; i++) {
        const char *s = t->byte2u[(unsigned char)w[i]];
        id[i] = vocab_id(t, s, strlen(s));
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    for (int32_t i = 0; i < n && !st; i++) consider(t, &h, id, next, i);
    while (!st && h.n) {
        uint64_t top = heap_pop(&h);
        int32_t i = (int32_t)(uint32_t)top, j, m;
        uint32_t r;
        /* stale: i was merged into its left neighbour, or its pair changed */
        if (id[i] == INT32_MIN || (j = next[i]) < 0 || !merge_of(t, id[i], id[j], &r, &m) || r != (uint32_t)(top >> 32)) continue;
        id[i] = m;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        id[j] = INT32_MIN;
        consider(t, &h, id, next, prev[i]);
        consider(t, &h, id, next, i);
    }
    for (int32_t i = st ? -1 : 0; i >= 0 && !st; i = next[i]) {
        if (id[i] < 0) st = bq_fail(BQ_ERR_PARSE, "tokenizer: byte 0x%02x has no token in the vocabulary", (unsigned char)w[i]);
        else if (!ipush(out, id[i])) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
    }
    free(id);
    free(prev);
    free(next);
    free(h.v);
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
    /* added tokens: the longest one starting at each byte, a window at a time
     * (each window rescans at most one token's length before it) */
    size_t win = t->ac.maxlen > (1u << 20) ? t->ac.maxlen : 1u << 20, w0 = 0, w1 = 0;
    int32_t *best = t->nadd ? malloc(win * sizeof *best) : NULL;
    if (!md || (t->nadd && !best)) { pcre2_match_data_free(md); free(best); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    ivec out = {0};
    bq_status st = BQ_OK;
    size_t pos = 0;
    while (pos < len && !st) {
        /* the earliest (then longest) added token at or after pos, as Hugging Face's leftmost-longest search */
        size_t at = len;
        int hit = -1;
        for (size_t i = pos; t->nadd && i < len; i++) {
            if (i >= w1) {
                w0 = i;
                w1 = len - i > win ? i + win : len;
                ac_scan(&t->ac, text, len, w0, w1, best);
            }
            if (best[i - w0] >= 0) { at = i; hit = best[i - w0]; break; }
        }
        st = encode_plain(t, text + pos, at - pos, md, &out);
        if (!st && hit >= 0 && !ipush(&out, t->add[hit].id)) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        pos = hit >= 0 ? at + t->add[hit].len : len;
    }
    pcre2_match_data_free(md);
    free(best);
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
