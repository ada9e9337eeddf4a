/* Declarative command-line options: each command describes its options in a table
 * (cli.h: cli_opt), and one parser reads argv against it, checks ranges and prints
 * `blockq CMD --help` from the same rows, so the help cannot drift from what parses. */
#include "cli.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int applies(const cli_opt *o, unsigned bit) { return !o->cmds || !bit || (o->cmds & bit); }

static const cli_opt *find(const cli_cmd *c, const char *name)
{
    for (const cli_opt *o = c->opts; o->name; o++)
        if (applies(o, c->bit) && !strcmp(o->name, name)) return o;
    return NULL;
}

static void help(const cli_cmd *c)
{
    printf("usage: blockq %s %s\n", c->cmd, c->usage);
    const char *about = cli_summary(c->cmd);
    if (about) printf("\n%c%s.\n", about[0] >= 'a' && about[0] <= 'z' ? about[0] - 'a' + 'A' : about[0], about + 1);
    if (c->about) printf("%s\n", c->about);
    printf("\noptions:\n");
    for (const cli_opt *o = c->opts; o->name; o++) {
        if (!applies(o, c->bit)) continue;
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        printf("  %-22s %s\n", left, o->help);
    }
    printf("  %-22s %s\n", "--help", "this text");
}

static int store(const char *cmd, const cli_opt *o, const char *v, void *args)
{
    void *at = (char *)args + o->off;
    char *end;
    uint64_t u;
    double x;
    switch (o->kind) {
    case CLI_STR: *(const char **)at = v; return 0;
    case CLI_FLAG: *(int *)at = 1; return 0;
    case CLI_CALL: return o->call(cmd, v, args);
    case CLI_U64:
        if (!parse_u64(v, &u)) return cli_error(cmd, "bad %s '%s': expected an unsigned integer", o->name, v);
        *(uint64_t *)at = u;
        return 0;
    case CLI_INT:
        if (!parse_u64(v, &u) || (double)u < o->lo || (double)u > o->hi)
            return cli_error(cmd, "bad %s '%s': expected an integer in [%.0f, %.0f]", o->name, v, o->lo, o->hi);
        *(int *)at = (int)u;
        return 0;
    case CLI_NUM:
        x = strtod(v, &end);
        if (!*v || *end || !(x >= o->lo && x <= o->hi))  /* NaN fails the range */
            return cli_error(cmd, "bad %s '%s': expected a number in [%g, %g]", o->name, v, o->lo, o->hi);
        *(double *)at = x;
        return 0;
    }
    return cli_error(cmd, "internal: option %s has no kind", o->name);
}

int cli_parse(const cli_cmd *c, int argc, char **argv, void *args)
{
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) { help(c); return CLI_HELP; }
        const cli_opt *o = s[0] == '-' && s[1] ? find(c, s) : NULL;
        if (o) {
            const char *v = NULL;
            if (o->kind != CLI_FLAG) {
                if (i + 1 >= argc) return cli_error(c->cmd, "option '%s' needs a value (%s)", s, o->arg);
                v = argv[++i];
            }
            int rc = store(c->cmd, o, v, args);
            if (rc) return rc;
        } else if (s[0] == '-' && s[1]) {
            return cli_error(c->cmd, "unknown option '%s' (blockq %s --help lists them)", s, c->cmd);
        } else if (npos < c->npos) {
            ((const char **)((char *)args + c->pos_off))[npos++] = s;
        } else {
            return cli_error(c->cmd, "unexpected argument '%s' (blockq %s --help)", s, c->cmd);
        }
    }
    return 0;
}

int cli_usage(const cli_cmd *c)
{
    return cli_error(c->cmd, "usage: blockq %s %s (blockq %s --help lists the options)", c->cmd, c->usage, c->cmd);
}

/* Shared value parsers for CLI_CALL rows. */
int cli_opt_round(const char *cmd, const char *v, bq_round *r, int *set)
{
    if (!parse_round(v, r)) return cli_error(cmd, "bad --round '%s': expected rne, away, zero or stochastic", v);
    if (set) *set = 1;
    return 0;
}
