/* blockq formats | qdq | pack | unpack */
#include "cli.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void json_num(FILE *o, double v)
{
    if (isfinite(v)) fprintf(o, "%.17g", v);
    else fprintf(o, "null");
}

static const cli_opt formats_opts[] = {
    {"--json", NULL, CLI_FLAG, 0, .help = "one JSON object per format"},
    {0}};
static const cli_cmd formats_cmd = {.cmd = "formats", .usage = "[--json]", .opts = formats_opts};

int cmd_formats(int argc, char **argv)
{
    int json = 0;
    int rc = cli_parse(&formats_cmd, argc, argv, &json);
    if (rc == CLI_HELP) printf("\nAny name of the grammar works too, beside the named formats listed:\n%s\n", bq_format_grammar());
    if (rc) return CLI_DONE(rc);
    if (json) printf("[\n");
    else printf("%-16s %-9s %7s %5s %6s %6s %12s %12s %8s %8s\n", "format", "family", "bits/el", "elem",
                "scale", "block", "max", "min_normal", "binades", "in-block");
    for (size_t i = 0; bq_format_list(i); i++) {
        bq_format *f;
        if (bq_format_parse(bq_format_list(i), &f)) return cli_status("formats", BQ_ERR_FORMAT);
        bq_format_info in;
        bq_format_get_info(f, &in);
        if (json) {
            printf("  {\"name\": \"%s\", \"family\": \"%s\", \"bits_per_element\": ", in.name, in.family);
            json_num(stdout, in.bits_per_element);
            printf(", \"elem_bits\": %d, \"scale_bits\": %d, \"block\": %d, \"max_normal\": ", in.elem_bits,
                   in.scale_bits, in.block);
            json_num(stdout, in.max_normal);
            printf(", \"min_normal\": ");
            json_num(stdout, in.min_normal);
            printf(", \"min_subnormal\": ");
            json_num(stdout, in.min_subnormal);
            printf(", \"range_binades\": ");
            json_num(stdout, in.range_binades);
            printf(", \"block_binades\": ");
            json_num(stdout, in.block_binades);
            printf("}%s\n", bq_format_list(i + 1) ? "," : "");
        } else {
            char blk[16];
            if (in.block > 0) snprintf(blk, sizeof blk, "%d", in.block);
            else snprintf(blk, sizeof blk, "%s", in.block == -1 ? "row" : in.block == -2 ? "tensor" : "-");
            printf("%-16s %-9s %7.3f %5d %6d %6s %12.4g %12.4g %8.1f %8.1f\n", in.name, in.family,
                   in.bits_per_element, in.elem_bits, in.scale_bits, blk, in.max_normal, in.min_normal,
                   in.range_binades, in.block_binades);
        }
        bq_format_free(f);
    }
    if (json) printf("]\n");
    return 0;
}

/* Options shared by qdq / pack / unpack. */
typedef struct {
    const char *pos[3];  /* the positional arguments, named below */
    const char *format, *in, *out;
    size_t rows, cols;
    int have_shape;
    bq_qopts q;
    int stats;
} tensor_args;

enum { QDQ = 1, PACK = 2, UNPACK = 4 };

static int set_shape(const char *cmd, const char *v, void *args)
{
    tensor_args *a = args;
    if (!parse_shape(v, &a->rows, &a->cols)) return cli_error(cmd, "bad --shape '%s': expected ROWSxCOLS, e.g. 8x96", v);
    a->have_shape = 1;
    return 0;
}

static int set_round(const char *cmd, const char *v, void *args) { return cli_opt_round(cmd, v, &((tensor_args *)args)->q.round, NULL); }

#define F(field) offsetof(tensor_args, field)
static const cli_opt tensor_opts[] = {
    {"--shape", "ROWSxCOLS", CLI_CALL, 0, .call = set_shape, .help = "the tensor's shape (rows of COLS float32 values)"},
    {"--round", "MODE", CLI_CALL, 0, .call = set_round, .cmds = QDQ | PACK, .help = "rne (default), away, zero or stochastic"},
    {"--seed", "S", CLI_U64, F(q.seed), .cmds = QDQ | PACK, .help = "stochastic rounding seed"},
    {"--threads", "T", CLI_INT, F(q.threads), 0, 256, .help = "CPU threads (0: all cores)"},
    {"--stats", NULL, CLI_FLAG, F(stats), .cmds = QDQ, .help = "print SQNR and errors (OUT may then be left out)"},
    {0}};
#undef F
static const cli_cmd tensor_cmds[] = {
    {.cmd = "qdq", .usage = "FORMAT --shape ROWSxCOLS IN.f32 [OUT.f32] [options]", .opts = tensor_opts, .bit = QDQ,
     .pos_off = offsetof(tensor_args, pos), .npos = 3},
    {.cmd = "pack", .usage = "FORMAT --shape ROWSxCOLS IN.f32 OUT [options]", .opts = tensor_opts, .bit = PACK,
     .pos_off = offsetof(tensor_args, pos), .npos = 3},
    {.cmd = "unpack", .usage = "FORMAT --shape ROWSxCOLS IN OUT.f32 [options]", .opts = tensor_opts, .bit = UNPACK,
     .pos_off = offsetof(tensor_args, pos), .npos = 3},
};

static int parse_tensor_args(int which, int argc, char **argv, tensor_args *a)
{
    memset(a, 0, sizeof *a);
    const cli_cmd *c = &tensor_cmds[which == QDQ ? 0 : which == PACK ? 1 : 2];
    int rc = cli_parse(c, argc, argv, a);
    if (rc) return rc;
    if (!a->pos[1] || (!a->pos[2] && !a->stats)) return cli_usage(c);
    if (!a->have_shape) return cli_error(c->cmd, "missing --shape ROWSxCOLS");
    a->format = a->pos[0];
    a->in = a->pos[1];
    a->out = a->pos[2];
    return 0;
}

/* Load a raw float32 file that must hold exactly rows*cols values. */
static int load_f32(const char *cmd, const char *path, size_t rows, size_t cols, float **out)
{
    void *data;
    size_t size;
    bq_status st = bq_read_file(path, &data, &size);
    if (st) return cli_status(cmd, st);
    if (size != rows * cols * sizeof(float)) {
        free(data);
        return cli_error(cmd, "'%s' holds %zu bytes (%zu float32 values%s); --shape %zux%zu needs %zu bytes", path,
                         size, size / 4, size % 4 ? " and a partial one" : "", rows, cols, rows * cols * 4);
    }
    *out = data;
    return 0;
}

int cmd_qdq(int argc, char **argv)
{
    tensor_args a;
    int rc = parse_tensor_args(QDQ, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    bq_format *f;
    if (bq_format_parse(a.format, &f)) return cli_status("qdq", BQ_ERR_FORMAT);
    float *x = NULL, *y = NULL;
    if ((rc = load_f32("qdq", a.in, a.rows, a.cols, &x))) goto done;
    size_t n = a.rows * a.cols;
    y = malloc(n * sizeof *y);
    if (!y) { rc = cli_error("qdq", "out of memory"); goto done; }
    bq_status st = bq_qdq(f, x, y, a.rows, a.cols, &a.q);
    if (st) { rc = cli_status("qdq", st); goto done; }
    if (a.stats) {
        bq_error_stats es;
        bq_error_measure(x, y, n, &es);
        bq_format_info in;
        bq_format_get_info(f, &in);
        printf("format %s  bits/element %.3f  SQNR %.2f dB  max_abs_err %.6g  rmse %.6g  nonfinite %zu\n", a.format,
               in.bits_per_element, es.sqnr_db, es.max_abs_err, es.rmse, es.n_nonfinite);
    }
    if (a.out && (st = bq_write_file_atomic(a.out, y, n * sizeof *y))) rc = cli_status("qdq", st);
done:
    free(x);
    free(y);
    bq_format_free(f);
    return rc;
}

int cmd_pack(int argc, char **argv)
{
    tensor_args a;
    int rc = parse_tensor_args(PACK, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    if (!a.out) return cli_error("pack", "missing OUT");
    bq_format *f;
    if (bq_format_parse(a.format, &f)) return cli_status("pack", BQ_ERR_FORMAT);
    float *x = NULL;
    uint8_t *p = NULL;
    if ((rc = load_f32("pack", a.in, a.rows, a.cols, &x))) goto done;
    size_t need = bq_packed_size(f, a.rows, a.cols);
    p = malloc(need ? need : 1);
    if (!p) { rc = cli_error("pack", "out of memory"); goto done; }
    bq_status st = bq_pack(f, x, a.rows, a.cols, &a.q, p, need);
    if (!st) st = bq_write_file_atomic(a.out, p, need);
    if (st) rc = cli_status("pack", st);
done:
    free(x);
    free(p);
    bq_format_free(f);
    return rc;
}

int cmd_unpack(int argc, char **argv)
{
    tensor_args a;
    int rc = parse_tensor_args(UNPACK, argc, argv, &a);
    if (rc) return CLI_DONE(rc);
    bq_format *f;
    if (bq_format_parse(a.format, &f)) return cli_status("unpack", BQ_ERR_FORMAT);
    void *p = NULL;
    float *y = NULL;
    size_t size;
    bq_status st = bq_read_file(a.in, &p, &size);
    if (st) { rc = cli_status("unpack", st); goto done; }
    y = malloc(a.rows * a.cols * sizeof *y);
    if (!y) { rc = cli_error("unpack", "out of memory"); goto done; }
    if ((st = bq_unpack(f, p, size, a.rows, a.cols, y)) ||
        (st = bq_write_file_atomic(a.out, y, a.rows * a.cols * sizeof *y)))
        rc = cli_status("unpack", st);
done:
    free(p);
    free(y);
    bq_format_free(f);
    return rc;
}
