/* JSON checks cJSON leaves to the caller. cJSON keeps every member of an object,
 * so a repeated key would silently resolve to its first occurrence; a file
 * from a stranger must not be read two ways, so repeated keys are refused. */
#include "model.h"
#include "strmap.h"
#include <cjson/cJSON.h>
#include <string.h>

static bq_status unique(const cJSON *node, const char *path, int depth)
{
    if (depth > 64) return bq_fail(BQ_ERR_PARSE, "%s: JSON nested deeper than 64 levels", path);
    bq_status st = BQ_OK;
    if (cJSON_IsObject(node) && node->child && node->child->next) {
        strmap seen = {0};
        for (const cJSON *c = node->child; c && !st; c = c->next) {
            int r = strmap_put(&seen, c->string, strlen(c->string), 0);
            if (r < 0) st = bq_fail(BQ_ERR_NOMEM, "out of memory");
            else if (!r) st = bq_fail(BQ_ERR_PARSE, "%s: key '%.80s' appears twice in one object", path, c->string);
        }
        strmap_free(&seen);
    }
    for (const cJSON *c = node->child; c && !st; c = c->next)
        if (c->child) st = unique(c, path, depth + 1);
    return st;
}

bq_status json_unique_keys(const cJSON *root, const char *path) { return unique(root, path, 0); }
