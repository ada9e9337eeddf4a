/* Per-thread last-error message: every fallible call sets it through bq_fail;
 * and the version. */
#include "core.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[1024];

bq_status bq_fail(bq_status s, const char *fmt, ...)
{
    /* format aside first: callers may pass bq_last_error() as an argument */
    char tmp[sizeof g_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(g_msg, tmp, sizeof g_msg);
    return s;
}

const char *bq_last_error(void) { return g_msg; }

const char *const BQ_ROUND_NAMES[4] = {"rne", "away", "zero", "stochastic"};

const char *bq_status_name(bq_status s)
{
    static const char *names[] = {"ok", "invalid argument", "bad format", "bad shape", "i/o error",
                                  "parse error", "out of memory", "non-finite value", "unsupported"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

const char *bq_version(void)
{
#define BQ_STR2(x) #x
#define BQ_STR(x) BQ_STR2(x)
    return BQ_STR(BQ_VERSION_MAJOR) "." BQ_STR(BQ_VERSION_MINOR) "." BQ_STR(BQ_VERSION_PATCH);
}

int bq_version_number(void) { return BQ_VERSION_MAJOR * 10000 + BQ_VERSION_MINOR * 100 + BQ_VERSION_PATCH; }
