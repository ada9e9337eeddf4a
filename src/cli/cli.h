#ifndef BQ_CLI_H
#define BQ_CLI_H
#include "blockq.h"
#include <stddef.h>

/* Exit codes: 0 ok, 1 internal failure, 2 bad input or usage. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_BADINPUT = 2 };

/* MPI ranks (mpi.c): rank 0 of 1 without MPI or outside mpirun. The sums are
 * over all ranks, in place, every rank getting the result. */
void cli_mpi_init(int *argc, char ***argv);
void cli_mpi_finalize(void);
int cli_mpi_rank(void);
int cli_mpi_size(void);
const char *cli_mpi_built(void);  /* NULL when built without MPI */
void cli_mpi_sum(double *x, size_t n);
void cli_mpi_sum_bytes(unsigned char *x, size_t n);
int cli_mpi_max(int v);
double cli_mpi_maxd(double v);

int cmd_formats(int argc, char **argv);
int cmd_qdq(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_unpack(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_cost(int argc, char **argv);
int cmd_sensitivity(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_finetune(int argc, char **argv);
int cmd_rtl(int argc, char **argv);
int cli_rtl_synth(const char *f, double *area_lane, double *luts_lane);

/* Append printf-style to a growing buffer (NULL on allocation failure, buffer freed). */
char *cli_appendf(char *buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Write buf atomically and free it; returns an exit code. */
int cli_save(const char *cmd, const char *path, char *buf, size_t len);

/* s ends with suffix */
int cli_ends_with(const char *s, const char *suffix);

/* s as a quoted, escaped JSON string (malloc'd; NULL on allocation failure). */
char *cli_json_quote(const char *s);

/* Bits per element of a format name (NaN if it does not parse). */
double cli_format_bits(const char *name);

/* SVG scatter, log-scale y; highlight may be NULL; returns malloc'd text (plot.c). */
char *svg_scatter(const double *x, const double *y, const char *const *labels, const int *highlight, int n,
                  double ref, const char *title, const char *xlabel, const char *ylabel);

/* Declarative options (opts.c). A command's table ends with a row whose name is NULL;
 * a row is stored at args + off as its kind says: CLI_STR const char *, CLI_INT int in
 * [lo, hi], CLI_U64 uint64_t, CLI_NUM double in [lo, hi], CLI_FLAG int set to 1, CLI_CALL
 * parsed by call. Tables shared by several commands give each row the commands' bits. */
typedef enum { CLI_STR, CLI_INT, CLI_U64, CLI_NUM, CLI_FLAG, CLI_CALL } cli_kind;
typedef struct {
    const char *name, *arg;  /* "--ctx", "S" (what --help shows; NULL for a flag) */
    cli_kind kind;
    size_t off;
    double lo, hi;
    int (*call)(const char *cmd, const char *v, void *args);
    unsigned cmds;  /* 0: every command of the table */
    const char *help;
} cli_opt;
typedef struct {
    const char *cmd, *usage, *about;  /* about: NULL or lines after the summary */
    const cli_opt *opts;
    unsigned bit;                     /* this command's bit in the rows' cmds */
    size_t pos_off;                   /* positional arguments: const char *[npos] at args + pos_off */
    int npos;
} cli_cmd;
enum { CLI_HELP = -1 };  /* cli_parse printed --help: the command exits 0 */
int cli_parse(const cli_cmd *c, int argc, char **argv, void *args);
int cli_usage(const cli_cmd *c);  /* "usage: ..." as an error; returns EXIT_BADINPUT */
int cli_opt_round(const char *cmd, const char *v, bq_round *r, int *set);
const char *cli_summary(const char *cmd);  /* main.c's one line for a command */
/* a parse result as the command's exit code: --help is success */
#define CLI_DONE(rc) ((rc) == CLI_HELP ? 0 : (rc))

/* Shared helpers (args.c). */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_status(const char *cmd, bq_status st); /* prints bq_last_error, returns exit code */
int parse_shape(const char *s, size_t *rows, size_t *cols);
int parse_round(const char *s, bq_round *r);
int parse_u64(const char *s, uint64_t *v);
int cli_device(const char *cmd, const char *s, int *dev);
/* The model's own tokenizer (m's when loaded: a .bq or GGUF file is then not read again;
 * else the model at path: a folder, .bq or GGUF file), and a text file's tokens by it
 * (the tokenizer kept in *keep unless NULL); an exit code. */
int cli_load_tokenizer(const char *cmd, const char *path, const bq_model *m, bq_tokenizer **t);
int cli_tokenize_file(const char *cmd, const char *model, const bq_model *m, const char *text, int32_t **ids, size_t *n,
                      bq_tokenizer **keep);
/* A quantisation config from the role flags (values[r] for names[r], NULL: not given),
 * then a TOML file's rules (which win where they match), then the rounding. */
bq_status cli_qconfig(const char *const *names, const char *const *values, int n, const char *config, int round_set,
                      bq_round r, uint64_t seed, bq_qconfig **out);
#endif
