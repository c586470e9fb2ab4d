/* main.c: the `ditmoe` command-line tool: a table of subcommands.
 *
 * Adding a subcommand: write cmd_NAME.c with `int cmd_NAME(int argc, char
 * **argv)`, declare it in cli.h, add one row below and the file to
 * meson.build.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    { "inspect", cmd_inspect, "show a model's config, size and sampling defaults" },
    { "forward", cmd_forward, "run one forward pass on .npy inputs" },
    { "generate", cmd_generate, "sample images (PNG) or latents (.npy)" },
    { "bench", cmd_bench, "measure forward latency, throughput and GFLOP/s" },
    { "convert", cmd_convert, "turn a PyTorch .pt checkpoint into a model directory" },
    { "decode", cmd_decode, "decode SD-VAE latents (.npy) to a PNG" },
    { "synth", cmd_synth, "write a model directory with random weights (tests, benchmarks)" },
    { "routing", cmd_routing, "which experts each class and noise level uses (N images a class)" },
};

static void usage(FILE *f)
{
    fputs("usage: ditmoe COMMAND [OPTIONS]   (ditmoe COMMAND --help for its options)\n\n"
          "commands:\n", f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EUSAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    cli_fail("unknown command '%s'", argv[1]);
    usage(stderr);
    return CLI_EUSAGE;
}
