/* A string -> int64 hash table (open addressing, FNV-1a), for every place that
 * must look names up or refuse duplicates in linear time: vocabularies, merges,
 * TOML keys, JSON object keys, tensor names. Keys are copied; lengths are
 * explicit, so keys may hold any bytes. */
#ifndef BQ_STRMAP_H
#define BQ_STRMAP_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char **keys;
    size_t *lens;
    int64_t *vals;
    size_t cap, n;
} strmap;

/* Room for n keys without growing (it grows anyway); 0 on allocation failure. */
int strmap_init(strmap *m, size_t n);
/* 1 and *v if present, else 0. */
int strmap_get(const strmap *m, const char *k, size_t len, int64_t *v);
/* Insert k -> v: 1 if inserted, 0 if k was already there (value unchanged), -1 out of memory. */
int strmap_put(strmap *m, const char *k, size_t len, int64_t v);
void strmap_free(strmap *m);

#endif
