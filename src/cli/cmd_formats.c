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

int cmd_formats(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: blockq formats [--json]\n\nLists the named formats. Any name of the grammar works too:\n%s\n",
                   bq_format_grammar());
            return 0;
        } else return cli_error("formats", "unknown option '%s' (accepted: --json)", argv[i]);
    }
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
    const char *format, *in, *out;
    size_t rows, cols;
    bq_qopts q;
    int stats;
} tensor_args;

static int parse_tensor_args(const char *cmd, int argc, char **argv, tensor_args *a, int allow_round)
{
    memset(a, 0, sizeof *a);
    const char *pos[3] = {0};
    int np = 0, have_shape = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--shape") && i + 1 < argc) {
            if (!parse_shape(argv[++i], &a->rows, &a->cols))
                return cli_error(cmd, "bad --shape '%s': expected ROWSxCOLS, e.g. 8x96", argv[i]);
            have_shape = 1;
        } else if (allow_round && !strcmp(s, "--round") && i + 1 < argc) {
            if (!parse_round(argv[++i], &a->q.round))
                return cli_error(cmd, "bad --round '%s': expected rne, away, zero or stochastic", argv[i]);
        } else if (allow_round && !strcmp(s, "--seed") && i + 1 < argc) {
            if (!parse_u64(argv[++i], &a->q.seed)) return cli_error(cmd, "bad --seed '%s': expected an unsigned integer", argv[i]);
        } else if (!strcmp(s, "--threads") && i + 1 < argc) {
            uint64_t t;
            if (!parse_u64(argv[++i], &t) || t > 256) return cli_error(cmd, "bad --threads '%s': expected 0..256", argv[i]);
            a->q.threads = (int)t;
        } else if (allow_round && !strcmp(s, "--stats")) {
            a->stats = 1;
        } else if (s[0] == '-' && s[1]) {
            return cli_error(cmd, "unknown or incomplete option '%s'", s);
        } else if (np < 3) {
            pos[np++] = s;
        } else {
            return cli_error(cmd, "too many arguments ('%s')", s);
        }
    }
    if (np < 2 || (np < 3 && !a->stats))
        return cli_error(cmd, "usage: blockq %s FORMAT --shape ROWSxCOLS%s IN OUT", cmd,
                         allow_round ? " [--round rne|away|zero|stochastic] [--seed N] [--threads N] [--stats]" : "");
    if (!have_shape) return cli_error(cmd, "missing --shape ROWSxCOLS");
    a->format = pos[0];
    a->in = pos[1];
    a->out = np > 2 ? pos[2] : NULL;
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
    int rc = parse_tensor_args("qdq", argc, argv, &a, 1);
    if (rc) return rc;
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
    int rc = parse_tensor_args("pack", argc, argv, &a, 1);
    if (rc) return rc;
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
    int rc = parse_tensor_args("unpack", argc, argv, &a, 0);
    if (rc) return rc;
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
