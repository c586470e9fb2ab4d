/* rt_check.c: routing_info.h on count tables from a file, for
 * test_measures.py to compare with its NumPy reference.
 *
 *   rt_check measures FILE   blocks "ROWS E" then ROWS lines of E counts;
 *                            prints one JSON line per block: tokens, h_expert,
 *                            h_cond, mi, share, entropy of each row, and
 *                            each row's 90% cover set
 *   rt_check report FILE     "N L E K" then N lines "CLASS NOISE" and L*E
 *                            counts (one forward's rows); adds them with
 *                            rt_counts_add and prints the raw tables and
 *                            rt_report_json as one JSON object
 *
 * A malformed file is refused with its name, line and the bad value (exit 1).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing_info.h"

/* Prints o as one line. Returns 0, or -1 when out of memory. */
static int print_json(const cJSON *o)
{
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    if (text)
        printf("%s\n", text);
    free(text);
    return text ? 0 : -1;
}

typedef struct reader {
    FILE *f;
    const char *path;
    int line;
} reader;

/* Reads the next whitespace-separated token as a count into *u (or, when d
 * is not NULL, a number into *d). Returns 0 or -1 after printing what is
 * wrong. */
static int next(reader *r, unsigned long long *u, double *d)
{
    char tok[64], *end;
    int c;
    while ((c = fgetc(r->f)) == ' ' || c == '\t' || c == '\n' || c == '\r')
        r->line += c == '\n';
    if (c == EOF) {
        fprintf(stderr, "rt_check: %s: line %d: the file ends early\n", r->path, r->line);
        return -1;
    }
    size_t n = 0;
    do
        tok[n++] = (char)c;
    while (n < sizeof tok - 1 && (c = fgetc(r->f)) != EOF && c != ' ' && c != '\t' &&
           c != '\n' && c != '\r');
    if (c == '\n')
        ungetc(c, r->f);
    tok[n] = 0;
    errno = 0;
    if (d)
        *d = strtod(tok, &end);
    else if (tok[0] == '-') /* strtoull would wrap it */
        end = tok;
    else
        *u = strtoull(tok, &end, 10);
    if (end == tok || *end || errno) {
        fprintf(stderr, "rt_check: %s: line %d: '%s' is not a %s\n", r->path, r->line, tok,
                d ? "number" : "count");
        return -1;
    }
    return 0;
}

static int next_int(reader *r, int lo, int hi, const char *what, int *out)
{
    unsigned long long v;
    if (next(r, &v, NULL))
        return -1;
    if (v < (unsigned long long)lo || v > (unsigned long long)hi) {
        fprintf(stderr, "rt_check: %s: line %d: %s %llu is out of range %d..%d\n", r->path,
                r->line, what, v, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* One "ROWS E" block: its measures as a JSON line. */
static int measure_block(reader *r)
{
    int rows, E, rc = -1;
    if (next_int(r, 1, 100000, "ROWS", &rows) || next_int(r, 1, 4096, "E", &E))
        return -1;
    uint64_t *t = malloc((size_t)rows * E * sizeof *t);  /* (rows, E) */
    int *set = malloc((size_t)E * sizeof *set);           /* (E) */
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; t && set && i < (size_t)rows * E; i++) {
        unsigned long long v;
        if (next(r, &v, NULL))
            goto done;
        t[i] = v;
    }
    if (!t || !set || !o)
        goto done;
    rt_info info;
    rt_mutual_info(t, rows, (size_t)E, E, &info);
    cJSON_AddNumberToObject(o, "tokens", info.tokens);
    cJSON_AddNumberToObject(o, "h_expert", info.h_expert);
    cJSON_AddNumberToObject(o, "h_cond", info.h_cond);
    cJSON_AddNumberToObject(o, "mi", info.mi);
    cJSON_AddNumberToObject(o, "share", info.share);
    cJSON *hs = cJSON_AddArrayToObject(o, "row_entropy"), *cs = cJSON_AddArrayToObject(o, "cover");
    for (int k = 0; k < rows; k++) {
        cJSON_AddItemToArray(hs, cJSON_CreateNumber(rt_entropy(t + (size_t)k * E, E)));
        int n = rt_cover_set(t + (size_t)k * E, E, RT_COVER, set);
        cJSON_AddItemToArray(cs, cJSON_CreateIntArray(set, n));
    }
    rc = print_json(o);
done:
    cJSON_Delete(o);
    free(t);
    free(set);
    return rc;
}

static int do_measures(reader *r)
{
    int c;
    for (;;) {
        while ((c = fgetc(r->f)) == ' ' || c == '\n' || c == '\r' || c == '\t')
            r->line += c == '\n';
        if (c == EOF)
            return 0;
        ungetc(c, r->f);
        if (measure_block(r))
            return -1;
    }
}

/* Reads N rows of one forward into (routing, class, noise) buffers. */
static int read_rows(reader *r, int n, size_t le, uint32_t *routing, int32_t *cls, float *noise)
{
    for (int i = 0; i < n; i++) {
        unsigned long long v;
        double d;
        if (next(r, &v, NULL) || next(r, NULL, &d))
            return -1;
        cls[i] = v > 1000000 ? 1000000 : (int32_t)v;
        noise[i] = (float)d;
        for (size_t j = 0; j < le; j++) {
            if (next(r, &v, NULL))
                return -1;
            routing[(size_t)i * le + j] = (uint32_t)v;
        }
    }
    return 0;
}

static int do_report(reader *r)
{
    int n, L, E, K, rc = -1;
    if (next_int(r, 1, 4096, "N", &n) || next_int(r, 1, 256, "L", &L) ||
        next_int(r, 1, 256, "E", &E) || next_int(r, 1, 100000, "K", &K))
        return -1;
    size_t le = (size_t)L * E;
    uint32_t *routing = malloc((size_t)n * le * sizeof *routing); /* (N, L, E) */
    int32_t *cls = malloc((size_t)n * sizeof *cls);               /* (N) */
    float *noise = malloc((size_t)n * sizeof *noise);             /* (N) */
    rt_counts *c = NULL;
    cJSON *o = NULL;
    if (!routing || !cls || !noise || rt_counts_new(&c, L, E, K) ||
        read_rows(r, n, le, routing, cls, noise))
        goto done;
    rt_counts_add(c, n, routing, cls, noise);
    o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "report", rt_report_json(c, NULL));
    cJSON *raw = cJSON_AddArrayToObject(o, "data");
    for (size_t i = 0; i < c->len; i++)
        cJSON_AddItemToArray(raw, cJSON_CreateNumber((double)c->data[i]));
    rc = print_json(o);
done:
    cJSON_Delete(o);
    rt_counts_free(c);
    free(routing), free(cls), free(noise);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "measures") && strcmp(argv[1], "report"))) {
        fprintf(stderr, "usage: rt_check measures|report FILE\n");
        return 2;
    }
    reader r = { fopen(argv[2], "r"), argv[2], 1 };
    if (!r.f) {
        fprintf(stderr, "rt_check: %s: cannot open: %s\n", argv[2], strerror(errno));
        return 1;
    }
    int rc = !strcmp(argv[1], "measures") ? do_measures(&r) : do_report(&r);
    fclose(r.f);
    rt_counts_free(NULL); /* a no-op, as the contract says */
    return rc ? 1 : 0;
}
