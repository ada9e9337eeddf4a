/* String hash table: see strmap.h. The table stays at most half full. */
#include "strmap.h"
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

int strmap_init(strmap *m, size_t n)
{
    memset(m, 0, sizeof *m);
    m->cap = 16;
    while (m->cap < 2 * n + 16) m->cap *= 2;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->lens = calloc(m->cap, sizeof *m->lens);
    m->vals = calloc(m->cap, sizeof *m->vals);
    if (m->keys && m->lens && m->vals) return 1;
    strmap_free(m);
    return 0;
}

static size_t slot_of(const strmap *m, const char *k, size_t len)
{
    size_t i = fnv1a(k, len) & (m->cap - 1);
    while (m->keys[i] && !(m->lens[i] == len && !memcmp(m->keys[i], k, len))) i = (i + 1) & (m->cap - 1);
    return i;
}

int strmap_get(const strmap *m, const char *k, size_t len, int64_t *v)
{
    if (!m->cap) return 0;
    size_t i = slot_of(m, k, len);
    if (!m->keys[i]) return 0;
    *v = m->vals[i];
    return 1;
}

static int grow(strmap *m)
{
    strmap g;
    if (!strmap_init(&g, m->cap)) return 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            size_t j = slot_of(&g, m->keys[i], m->lens[i]);
            g.keys[j] = m->keys[i];
            g.lens[j] = m->lens[i];
            g.vals[j] = m->vals[i];
            g.n++;
        }
    free(m->keys);
    free(m->lens);
    free(m->vals);
    *m = g;
    return 1;
}

int strmap_put(strmap *m, const char *k, size_t len, int64_t v)
{
    if ((!m->cap && !strmap_init(m, 0)) || (2 * (m->n + 1) > m->cap && !grow(m))) return -1;
    size_t i = slot_of(m, k, len);
    if (m->keys[i]) return 0;
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, k, len);
    c[len] = 0;
    m->keys[i] = c;
    m->lens[i] = len;
    m->vals[i] = v;
    m->n++;
    return 1;
}

void strmap_free(strmap *m)
{
    for (size_t i = 0; m->keys && i < m->cap; i++) free(m->keys[i]);
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}
