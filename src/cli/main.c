/* blockq command-line tool: one function per subcommand, dispatched by table. */
#include "cli.h"
#include "bq_cuda.h"
#include <stdio.h>
#include <string.h>

typedef struct { const char *name, *summary; int (*run)(int argc, char **argv); } command;

static const command commands[] = {
    {"formats", "list every number format with its bits/element and range", cmd_formats},
    {"qdq", "fake-quantise a raw float32 file through a format", cmd_qdq},
    {"pack", "pack a raw float32 file into a format's exact bit layout", cmd_pack},
    {"unpack", "unpack a packed file back to raw float32", cmd_unpack},
    {"tokenize", "print the token ids of a text", cmd_tokenize},
    {"generate", "continue a prompt (greedy, or --temperature/--top-p sampling)", cmd_generate},
    {"ppl", "perplexity of a text file over non-overlapping windows", cmd_ppl},
    {"eval", "accuracy on multiple-choice and cloze tasks (JSONL), scored as lm-evaluation-harness does", cmd_eval},
    {"sweep", "perplexity over a list of W/A formats: Markdown, JSON and an SVG plot", cmd_sweep},
    {"cost", "memory and arithmetic density of formats (and a model's bytes)", cmd_cost},
    {"sensitivity", "per-layer perplexity change when one linear is quantised", cmd_sensitivity},
    {"search", "per-layer mixed-precision search under a bits budget", cmd_search},
    {"quantize", "pack a model to its formats' true size: a .bq file, or GGUF for llama.cpp", cmd_quantize},
    {"info", "what a model (folder, .bq, GGUF) holds: packed and float bytes, bits/weight", cmd_info},
    {"rtl", "Verilog for a format's block dot product: bit-exact simulation (--check), synthesis cost (--synth)", cmd_rtl},
    {"finetune", "quantisation-aware fine-tuning (full or LoRA) of a LLaMA-family model on a text", cmd_finetune},
    {"logits", "write float32 logits [n, vocab] for a file of int32 token ids", cmd_logits},
};

const char *cli_summary(const char *cmd)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name)) return commands[i].summary;
    return NULL;
}

static void usage(FILE *o)
{
    fprintf(o, "usage: blockq COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(o, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(o, "\n'blockq COMMAND --help' describes one command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        char why[200];
        int gpus = bq_cuda_devices(why, sizeof why);
        printf("blockq %s\nMPI: %s\nCUDA: %s\n", bq_version(), cli_mpi_built() ? "built in" : "not built in",
               gpus ? bq_cuda_device_name() : why);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            cli_mpi_init(&argc, &argv);
            int rc = commands[i].run(argc - 1, argv + 1);
            cli_mpi_finalize();
            return rc;
        }
    fprintf(stderr, "blockq: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
