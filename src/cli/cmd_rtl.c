/* blockq rtl: Verilog for a format's block dot product, its bit-exact check in a
 * simulator (Icarus Verilog) and its cost from synthesis (Yosys). */
#include "cli.h"
#include "rtl.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* A tool on PATH, or a message naming the Debian package that provides it. */
static int have_tool(const char *tool, const char *pkg)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", tool);
    if (!system(cmd)) return 1;
    fprintf(stderr, "blockq rtl: %s is not installed (Debian package %s)\n", tool, pkg);
    return 0;
}

/* Run a shell command in dir, its output to dir/log; 0 on success. */
static int run_in(const char *dir, const char *cmd, const char *log)
{
    char *full = NULL;
    size_t len = 0, cap = 0;
    if (!(full = cli_appendf(full, &len, &cap, "cd '%s' && %s >%s 2>&1", dir, cmd, log))) return -1;
    int rc = system(full);
    free(full);
    return rc;
}

/* The number after `key` on the first line of file holding it (or -1). */
static double scan_number(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    double v = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, key);
        if (p && sscanf(p + strlen(key), " %lf", &v) == 1) break;
    }
    fclose(f);
    return v;
}

typedef struct { double cells, area, luts, carries, depth; } synth_result;

/* Gate-level synthesis to 2-input gates (area in NAND2-like units: simple gates 1,
 * XOR/XNOR/MUX 2, NOT 0.5, flip-flops 4) with its longest path in cells, and the
 * iCE40 mapping's 4-input LUTs and carry cells. */
static int synthesise(const char *dir, const char *name, int changed, synth_result *r)
{
    char cmd[2048], p[4200], q[4200];
    /* cached: the statistics of this very module (it was not rewritten since) */
    snprintf(p, sizeof p, "%s/%s_ice40.txt", dir, name);
    snprintf(q, sizeof q, "%s/%s_ltp.txt", dir, name);
    if (changed || access(p, R_OK) || access(q, R_OK)) {
        remove(p);  /* written last: present only after both syntheses succeeded */
        snprintf(cmd, sizeof cmd,
                 "timeout 1200 yosys -q -p 'read_verilog %s.v; synth -flatten -top %s; abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX; "
                 "opt_clean; tee -o %s_gates.txt stat; tee -o %s_ltp.txt ltp -noff'",
                 name, name, name, name);
        if (run_in(dir, cmd, "yosys_gates.log"))
            return cli_error("rtl", "yosys (gates) failed or ran past 20 minutes: see %s/yosys_gates.log", dir);
        snprintf(cmd, sizeof cmd, "timeout 1200 yosys -q -p 'read_verilog %s.v; synth_ice40 -top %s; tee -o %s_ice40.txt stat'", name, name, name);
        if (run_in(dir, cmd, "yosys_ice40.log"))
            return cli_error("rtl", "yosys (iCE40) failed or ran past 20 minutes: see %s/yosys_ice40.log", dir);
    }
    static const char *types[] = {"$_AND_", "$_NAND_", "$_OR_", "$_NOR_", "$_ANDNOT_", "$_ORNOT_", "$_XOR_", "$_XNOR_",
                                  "$_MUX_", "$_NOT_", "$_DFF_P_"};
    static const double weight[] = {1, 1, 1, 1, 1, 1, 2, 2, 2, 0.5, 4};
    snprintf(p, sizeof p, "%s/%s_gates.txt", dir, name);
    r->cells = scan_number(p, "Number of cells:");
    r->area = 0;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        double n = scan_number(p, types[i]);
        if (n > 0) r->area += n * weight[i];
    }
    snprintf(p, sizeof p, "%s/%s_ltp.txt", dir, name);
    r->depth = scan_number(p, "(length=");
    snprintf(p, sizeof p, "%s/%s_ice40.txt", dir, name);
    r->luts = scan_number(p, "SB_LUT4");
    r->carries = scan_number(p, "SB_CARRY");
    if (r->carries < 0) r->carries = 0;
    if (r->cells < 0 || r->luts < 0) return cli_error("rtl", "could not read Yosys's statistics in %s", dir);
    return 0;
}

/* mkdir -p: 1 when path is a folder at the end */
static int make_dirs(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            int ok = !mkdir(path, 0755) || errno == EEXIST;
            *p = '/';
            if (!ok) break;
        }
    if (mkdir(path, 0755) && errno != EEXIST) { fprintf(stderr, "blockq: %s: %s\n", path, strerror(errno)); return 0; }
    return 1;
}

/* The synthesised cost of format f against itself (cost --synth): area and iCE40 LUTs per
 * lane, cached under $BQ_RTL_CACHE (default ~/.cache/blockq/rtl). 1: done, 0: the generator
 * refuses the format (why in bq_last_error), -1: a tool failed or is missing. */
int cli_rtl_synth(const char *f, double *area_lane, double *luts_lane)
{
    rtl_design *d;
    if (rtl_new(f, NULL, 0, 0, &d)) return 0;
    const char *env = getenv("BQ_RTL_CACHE"), *home = getenv("HOME");
    char dir[4200];
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else snprintf(dir, sizeof dir, "%s/.cache/blockq/rtl", home ? home : "/tmp");
    int rc = -1, changed, acc, ex, K;
    synth_result sr;
    rtl_widths(d, &acc, &ex, &K);
    size_t n = strlen(dir);
    snprintf(dir + n, sizeof dir - n, "/%s", rtl_module_name(d));
    if (make_dirs(dir) && have_tool("yosys", "yosys") && !rtl_write(d, dir, 8, 1, &changed) &&
        !synthesise(dir, rtl_module_name(d), changed, &sr)) {
        *area_lane = sr.area / K;
        *luts_lane = sr.luts / K;
        rc = 1;
    }
    rtl_free(d);
    return rc;
}

typedef struct {
    const char *pos[1], *fa, *out;
    int lanes, pipe, check, synth, json, nvec;
    uint64_t seed;
} rtl_args;

#define F(field) offsetof(rtl_args, field)
static const cli_opt rtl_opts[] = {
    {"--a", "FORMAT", CLI_STR, F(fa), .help = "the activations' format (default: the weights')"},
    {"--lanes", "N", CLI_INT, F(lanes), 1, 256, .help = "products a cycle (default: the block)"},
    {"--pipeline", NULL, CLI_FLAG, F(pipe), .help = "registers between the product and the sum"},
    {"--out", "DIR", CLI_STR, F(out), .help = "where the Verilog, test bench and vectors go"},
    {"--vectors", "N", CLI_INT, F(nvec), 8, 1000000, .help = "test vectors (default 2000)"},
    {"--seed", "S", CLI_U64, F(seed), .help = "the vectors' seed (default 1)"},
    {"--check", NULL, CLI_FLAG, F(check), .help = "simulate with Icarus Verilog against the library, bit for bit"},
    {"--synth", NULL, CLI_FLAG, F(synth), .help = "synthesise with Yosys: cells, area, depth, iCE40 LUTs"},
    {"--json", NULL, CLI_FLAG, F(json), .help = "machine-readable output"},
    {0}};
#undef F
static const cli_cmd rtl_cmd = {.cmd = "rtl", .usage = "FORMAT --out DIR [options]", .about = "docs/rtl.md describes the module.",
                                .opts = rtl_opts, .pos_off = offsetof(rtl_args, pos), .npos = 1};

int cmd_rtl(int argc, char **argv)
{
    rtl_args a = {.nvec = 2000, .seed = 1};
    int prc = cli_parse(&rtl_cmd, argc, argv, &a);
    if (prc) return CLI_DONE(prc);
    if (!a.pos[0] || !a.out) return cli_usage(&rtl_cmd);
    const char *fw = a.pos[0], *fa = a.fa, *out = a.out;
    int lanes = a.lanes, pipe = a.pipe, check = a.check, synth = a.synth, json = a.json, nvec = a.nvec;
    uint64_t seed = a.seed;
    rtl_design *d;
    bq_status st = rtl_new(fw, fa, lanes, pipe, &d);
    if (st) return cli_status("rtl", st);
    int rc = 0;
    char outdir[4200];
    snprintf(outdir, sizeof outdir, "%s", out);
    if (!make_dirs(outdir)) { rc = EXIT_BADINPUT; goto done; }
    int changed;
    if ((st = rtl_write(d, out, nvec, seed, &changed))) { rc = cli_status("rtl", st); goto done; }
    const char *name = rtl_module_name(d);
    int acc_bits, ex_bits, K;
    rtl_widths(d, &acc_bits, &ex_bits, &K);
    int passed = -1;
    if (check) {
        if (!have_tool("iverilog", "iverilog")) { rc = EXIT_BADINPUT; goto done; }
        char cmd[1024], log[4300];
        snprintf(cmd, sizeof cmd, "iverilog -g2005 -o %s.sim %s.v %s_tb.v && vvp -n %s.sim", name, name, name, name);
        snprintf(log, sizeof log, "%s_sim.log", name);  /* one per module: designs may share a folder */
        run_in(out, cmd, log);
        snprintf(log, sizeof log, "%s/%s_sim.log", out, name);
        passed = scan_number(log, "PASS") == nvec;
        if (!passed) { rc = cli_error("rtl", "%s: the simulation disagrees with the library (%s)", name, log); goto done; }
    }
    synth_result sr = {-1, -1, -1, -1, -1};
    if (synth) {
        if (!have_tool("yosys", "yosys")) { rc = EXIT_BADINPUT; goto done; }
        if ((rc = synthesise(out, name, changed, &sr))) goto done;
    }
    if (json)
        printf("{\"module\": \"%s\", \"w\": \"%s\", \"a\": \"%s\", \"lanes\": %d, \"block\": %d, \"fma\": %s, \"pipeline\": %d, \"acc_bits\": %d, \"check\": %s, "
               "\"cells\": %.0f, \"area\": %.1f, \"depth\": %.0f, \"ice40_luts\": %.0f, \"ice40_carries\": %.0f}\n",
               name, fw, fa ? fa : fw, K, rtl_block(d), ex_bits ? "false" : "true", pipe, acc_bits, passed < 0 ? "null" : passed ? "true" : "false", sr.cells, sr.area,
               sr.depth, sr.luts, sr.carries);
    else {
        if (ex_bits) printf("%s/%s.v: %s x %s, %d-bit exact accumulator%s\n", out, name, fw, fa ? fa : fw, acc_bits, pipe ? ", pipelined" : "");
        else printf("%s/%s.v: %s x %s, %d fused multiply-adds into float32\n", out, name, fw, fa ? fa : fw, K);
        if (passed > 0) printf("simulation: %d vectors bit-exact against the %s\n", nvec, ex_bits ? "library" : "C library's fmaf");
        if (synth)
            printf("synthesis: %.0f cells (area %.1f), longest path %.0f cells; iCE40: %.0f LUT4, %.0f carry\n", sr.cells, sr.area,
                   sr.depth, sr.luts, sr.carries);
    }
done:
    rtl_free(d);
    return rc;
}
