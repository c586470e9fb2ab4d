/* cli.h: what the `ditmoe` subcommands share.
 *
 * Each subcommand lives in its own cmd_NAME.c as `int cmd_NAME(int argc,
 * char **argv)` (argv[0] is the subcommand's name) returning the process
 * exit status, and is listed once in main.c's table. Failures print
 * "ditmoe: <message>" to stderr (cli_fail) and return non-zero; nothing
 * here exits or aborts, so a subcommand cleans up on every path.
 */
#ifndef DITMOE_CLI_H
#define DITMOE_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <ditmoe/dit.h>

/* Exit statuses: 1 a failure while running, 2 a bad command line. */
#define CLI_EFAIL 1
#define CLI_EUSAGE 2

/* ---- subcommands (main.c's table) ------------------------------------ */
int cmd_inspect(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_routing(int argc, char **argv);

/* ---- messages --------------------------------------------------------- */

/* Prints "ditmoe: <message>\n" to stderr; returns CLI_EFAIL. */
int cli_fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* ---- options ---------------------------------------------------------- */

/* One option "--name VALUE" (or "--name=VALUE"); a flag when value is
 * NULL, then *flag is set to 1. Values point into argv. */
typedef struct cli_opt {
    const char *name;    /* without the leading "--" */
    const char **value;  /* where the argument goes, or NULL for a flag */
    int *flag;
} cli_opt;

/* Parses argv[1..argc) against opts[0..n). "--help"/"-h" prints usage to
 * stdout and returns -1 (the caller returns 0); a bad command line prints
 * the reason and usage to stderr and returns CLI_EUSAGE; else 0. */
int cli_parse(int argc, char **argv, const cli_opt *opts, int n, const char *usage);

/* Converters for option values: 0 on success, else print "ditmoe: --NAME:
 * ..." naming the value and the allowed range and return CLI_EUSAGE. */
int cli_int(const char *name, const char *s, long lo, long hi, int *out);
int cli_u64(const char *name, const char *s, uint64_t *out);
int cli_double(const char *name, const char *s, double lo, double hi, double *out);

/* ---- models ------------------------------------------------------------ */

/* The embedded default model directory (models/fashion-mnist in the source
 * tree for a binary in the build tree, else in the install datadir; the
 * first of them that exists), or NULL when there is none. Static buffer. */
const char *cli_default_model(void);

/* The bundled model `name` (models/NAME under the same roots as the
 * default), or NULL when there is none. Static buffer. */
const char *cli_bundled_model(const char *name);

/* Loads `path`, or the default model when path is NULL; no_pack keeps the
 * weights as stored (BLAS path, see dit_model_settings); compute: "f32"
 * or "int8" (NULL: f32). Prints the failure and returns CLI_EFAIL (or
 * CLI_EUSAGE for a bad compute name); *name says what was loaded. */
int cli_load_model(const char *path, int no_pack, const char *compute, dit_model **m,
                   const char **name);
/* Model settings from the common options (CLI_EUSAGE after a message for
 * a compute mode that is not f32 or int8). */
int cli_model_settings(dit_model_settings *set, int no_pack, const char *compute);

/* Seconds on a monotonic clock. */
double cli_now(void);
/* CPU seconds of the whole process (all threads). */
double cli_cpu_now(void);

/* ---- threads ------------------------------------------------------------ */

/* The cores online: the default --threads of generate, decode and bench. */
int cli_cores(void);

/* Before the engine runs: BLAS to 1 thread (the engine's pool owns the
 * cores; BLAS's own threads would spin against it), and dit_blas_warning
 * printed to stderr when OpenBLAS does not know this CPU. */
void cli_engine_setup(void);

#endif
