/* safetensors reader: memory-mapped, every header field validated.
 *
 * File = u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data block; offsets are relative to the data block. */
#include "model.h"
#include "qkern.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20)

static int dtype_of(const char *s, st_dtype *dt, size_t *size)
{
    if (!strcmp(s, "F32")) { *dt = DT_F32; *size = 4; return 1; }
    if (!strcmp(s, "F16")) { *dt = DT_F16; *size = 2; return 1; }
    if (!strcmp(s, "BF16")) { *dt = DT_BF16; *size = 2; return 1; }
    return 0;
}

typedef struct { size_t b, e; const char *name; } span;
static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b;
}

static bq_status add_tensor(st_set *s, st_tensor *t)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        st_tensor *nt = realloc(s->t, cap * sizeof *nt);
        if (!nt) return bq_fail(BQ_ERR_NOMEM, "out of memory");
        s->t = nt;
        s->cap = cap;
    }
    s->t[s->n++] = *t;
    return BQ_OK;
}

/* Parse one header (already in memory) against a data block of data_size bytes. */
bq_status st_parse_header(st_set *s, const char *path, const char *hdr, size_t hlen, const uint8_t *data,
                          size_t data_size)
{
    cJSON *root = cJSON_ParseWithLength(hdr, hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return bq_fail(BQ_ERR_PARSE, "%s: safetensors header is not a JSON object", path);
    }
    bq_status st = json_unique_keys(root, path);
    if (st) { cJSON_Delete(root); return st; }
    size_t first = s->n, count = 0;
    for (cJSON *it = root->child; it; it = it->next) count++;
    span *spans = calloc(count ? count : 1, sizeof *spans);
    size_t ns = 0;
    if (!spans) { cJSON_Delete(root); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    for (cJSON *it = root->child; it && !st; it = it->next) {
        const char *name = it->string;
        if (!strcmp(name, "__metadata__")) continue;
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        st_tensor t = {0};
        size_t esize;
        if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
            cJSON_GetArraySize(off) != 2) {
            st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' lacks dtype/shape/data_offsets", path, name);
            break;
        }
        if (!dtype_of(dt->valuestring, &t.dt, &esize)) {
            st = bq_fail(BQ_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; supported: F32, F16, BF16", path, name,
                         dt->valuestring);
            break;
        }
        int nd = cJSON_GetArraySize(sh);
        if (nd > 4) { st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' has %d dimensions (at most 4)", path, name, nd); break; }
        size_t numel = 1;
        for (int d = 0; d < nd; d++) {
            cJSON *v = cJSON_GetArrayItem(sh, d);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e12 || v->valuedouble != (double)(int64_t)v->valuedouble) {
                st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' has a bad shape entry", path, name);
                break;
            }
            t.shape[d] = (int64_t)v->valuedouble;
            if (t.shape[d] && numel > SIZE_MAX / 16 / (size_t)t.shape[d]) {
                st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' shape overflows", path, name);
                break;
            }
            numel *= (size_t)t.shape[d];
        }
        if (st) break;
        t.ndim = nd;
        double b = cJSON_GetArrayItem(off, 0)->valuedouble, e = cJSON_GetArrayItem(off, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(off, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(off, 1)) || b < 0 ||
            e < b || e > (double)data_size || b != (double)(size_t)b || e != (double)(size_t)e) {
            st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' data_offsets [%.0f, %.0f] outside the %zu-byte data block",
                         path, name, b, e, data_size);
            break;
        }
        t.nbytes = (size_t)e - (size_t)b;
        if (t.nbytes != numel * esize) {
            st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' spans %zu bytes but its shape and dtype need %zu", path, name,
                         t.nbytes, numel * esize);
            break;
        }
        t.numel = numel;
        t.data = data + (size_t)b;
        int fresh = strmap_put(&s->index, name, strlen(name), (int64_t)s->n);
        if (fresh <= 0) {
            st = fresh ? bq_fail(BQ_ERR_NOMEM, "out of memory") : bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' appears twice", path, name);
            break;
        }
        t.name = strdup(name);
        if (!t.name) { st = bq_fail(BQ_ERR_NOMEM, "out of memory"); break; }
        if ((st = add_tensor(s, &t))) { free(t.name); break; }
        spans[ns++] = (span){(size_t)b, (size_t)e, s->t[s->n - 1].name};
    }
    if (!st) {
        qsort(spans, ns, sizeof *spans, by_begin);
        for (size_t i = 1; i < ns; i++)
            if (spans[i].b < spans[i - 1].e) {
                st = bq_fail(BQ_ERR_PARSE, "%s: tensors '%s' and '%s' overlap", path, spans[i - 1].name, spans[i].name);
                break;
            }
    }
    free(spans);
    cJSON_Delete(root);
    if (st) {  /* drop this header's tensors, from the list and the index */
        for (size_t i = first; i < s->n; i++) free(s->t[i].name);
        s->n = first;
        strmap_free(&s->index);
        for (size_t i = 0; i < s->n; i++)
            if (strmap_put(&s->index, s->t[i].name, strlen(s->t[i].name), (int64_t)i) < 0) break;
    }
    return st;
}

bq_status st_open_file(st_set *s, const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return bq_fail(BQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) { close(fd); return bq_fail(BQ_ERR_IO, "'%s' is not a regular file", path); }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { close(fd); return bq_fail(BQ_ERR_PARSE, "%s: truncated (%zu bytes, no header)", path, size); }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return bq_fail(BQ_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
    if (s->nmaps == sizeof s->maps / sizeof s->maps[0]) {
        munmap(map, size);
        return bq_fail(BQ_ERR_PARSE, "too many shards (at most %zu)", sizeof s->maps / sizeof s->maps[0]);
    }
    s->maps[s->nmaps] = map;
    s->map_sizes[s->nmaps++] = size;
    return st_parse_buffer(s, path, map, size);
}

/* A whole safetensors file in memory (the buffer must outlive the set). */
bq_status st_parse_buffer(st_set *s, const char *path, const void *buf, size_t size)
{
    if (size < 8) return bq_fail(BQ_ERR_PARSE, "%s: truncated (%zu bytes, no header)", path, size);
    uint64_t hlen = 0;
    memcpy(&hlen, buf, 8);  /* little-endian host */
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8)
        return bq_fail(BQ_ERR_PARSE, "%s: header length %llu does not fit the %zu-byte file (truncated?)", path,
                       (unsigned long long)hlen, size);
    const uint8_t *base = buf;
    return st_parse_header(s, path, (const char *)base + 8, (size_t)hlen, base + 8 + hlen, size - 8 - (size_t)hlen);
}

const st_tensor *st_find(const st_set *s, const char *name)
{
    int64_t i;
    return strmap_get(&s->index, name, strlen(name), &i) ? &s->t[i] : NULL;
}

void st_close(st_set *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->t[i].name);
    free(s->t);
    strmap_free(&s->index);
    for (size_t i = 0; i < s->nmaps; i++) munmap(s->maps[i], s->map_sizes[i]);
    memset(s, 0, sizeof *s);
}

void st_to_f32(const st_tensor *t, float *out)
{
    const uint8_t *p = t->data;
    for (size_t i = 0; i < t->numel; i++) {
        uint16_t h;
        if (t->dt == DT_F32) memcpy(&out[i], p + 4 * i, 4);
        else { memcpy(&h, p + 2 * i, 2); out[i] = f16_to_f32(t->dt == DT_BF16, h); }
    }
}

/* A model folder: model.safetensors, or model.safetensors.index.json naming shards. */
bq_status st_open_dir(st_set *s, const char *dir)
{
    memset(s, 0, sizeof *s);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    void *idx;
    size_t n;
    if (access(path, F_OK) != 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        bq_status st = st_open_file(s, path);
        if (st) st_close(s);
        return st;
    }
    bq_status st = bq_read_file(path, &idx, &n);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength(idx, n);
    free(idx);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return bq_fail(BQ_ERR_PARSE, "%s: no weight_map object", path);
    }
    if ((st = json_unique_keys(root, path))) { cJSON_Delete(root); return st; }
    /* open each distinct shard once; then check every mapped tensor exists */
    strmap shards = {0};
    for (cJSON *it = wm->child; it && !st; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || !strcmp(it->valuestring, "..")) {
            st = bq_fail(BQ_ERR_PARSE, "%s: bad shard name for '%s'", path, it->string);
            break;
        }
        int fresh = strmap_put(&shards, it->valuestring, strlen(it->valuestring), 0);
        if (fresh < 0) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
        if (fresh <= 0) continue;
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/%s", dir, it->valuestring);
        st = st_open_file(s, sp);
    }
    strmap_free(&shards);
    for (cJSON *it = wm->child; it && !st; it = it->next)
        if (!st_find(s, it->string))
            st = bq_fail(BQ_ERR_PARSE, "%s: tensor '%s' is listed but missing from shard %s", path, it->string,
                         it->valuestring);
    cJSON_Delete(root);
    if (st) st_close(s);
    return st;
}

/* ---- writer -------------------------------------------------------------------- */

bq_status st_write_f32(const char *path, const st_out *t, size_t n, const char *const *meta)
{
    cJSON *root = cJSON_CreateObject(), *md = NULL;
    bq_status st = BQ_OK;
    size_t off = 0;
    if (!root) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    if (meta && meta[0]) {
        md = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; md && meta[i]; i += 2) cJSON_AddStringToObject(md, meta[i], meta[i + 1]);
    }
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        double shape[2] = {(double)t[i].shape[0], (double)t[i].shape[1]};
        size_t bytes = (size_t)t[i].shape[0] * (t[i].ndim > 1 ? (size_t)t[i].shape[1] : 1) * 4;
        double offs[2] = {(double)off, (double)(off + bytes)};
        if (!e || !cJSON_AddStringToObject(e, "dtype", "F32") ||
            !cJSON_AddItemToObject(e, "shape", cJSON_CreateDoubleArray(shape, t[i].ndim)) ||
            !cJSON_AddItemToObject(e, "data_offsets", cJSON_CreateDoubleArray(offs, 2))) {
            cJSON_Delete(root);
            return bq_fail(BQ_ERR_NOMEM, "out of memory");
        }
        off += bytes;
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!hdr) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    bq_afile *f;
    if (!(st = bq_afile_open(path, &f))) {
        bq_afile_write(f, len8, 8);
        bq_afile_write(f, hdr, hl);
        bq_afile_write(f, "        ", padded - hl);  /* the format pads the header with spaces */
        for (size_t i = 0; i < n; i++)
            bq_afile_write(f, t[i].data, (size_t)t[i].shape[0] * (t[i].ndim > 1 ? (size_t)t[i].shape[1] : 1) * 4);
        st = bq_afile_commit(f);
    }
    free(hdr);
    return st;
}
