/* config.c: the server's settings from defaults, a JSON file, the
 * environment and the command line.
 *
 * One table lists every field (name, type, place in srv_config, range,
 * default, help), so the file reader, the environment, the command line and
 * --help all stay in step: adding a setting is adding a row. The JSON file
 * is strict: an unknown key or a wrong type is an error naming the field,
 * because a misspelt setting silently ignored is a classic deployment bug.
 */
#include "config.h"

#include <ditmoe/dit.h>

#include <arpa/inet.h>
#include <ditmoe/dit_json.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { F_INT, F_BOOL, F_DOUBLE, F_STR };

typedef struct field {
    const char *name;
    int type;
    size_t off;
    size_t size;       /* F_STR: buffer size */
    double min, max;   /* F_INT, F_DOUBLE */
    const char *env;   /* environment variable, or NULL */
    const char *help;
} field;

#define I(n, lo, hi, env, help) {#n, F_INT, offsetof(srv_config, n), 0, lo, hi, env, help}
#define B(n, help) {#n, F_BOOL, offsetof(srv_config, n), 0, 0, 1, NULL, help}
#define D(n, lo, hi, help) {#n, F_DOUBLE, offsetof(srv_config, n), 0, lo, hi, NULL, help}
#define S(n, env, help) {#n, F_STR, offsetof(srv_config, n), sizeof(((srv_config *)0)->n), 0, 0, env, help}

static const field FIELDS[] = {
    S(listen, "DITMOE_LISTEN", "address to listen on (IPv4 or IPv6 literal); --host is the same"),
    I(port, 0, 65535, "DITMOE_PORT", "TCP port; 0 picks a free one (printed at start)"),
    S(model, "DITMOE_MODEL", "model directory or file, or a bundled model's name "
      "(fashion-mnist-ddpm); empty: the bundled models/fashion-mnist"),
    S(web_root, NULL, "folder of the demo page served at /; empty: the source tree's web/ "
      "(build-tree binary) or PREFIX/share/ditmoe/web"),
    S(instance_id, "DITMOE_INSTANCE_ID", "this replica's name: the prefix of its job ids and "
      "the X-Ditmoe-Instance header (1-32 of A-Z a-z 0-9 _ -); empty: random at start"),
    I(threads, 0, 256, "DITMOE_THREADS", "engine worker threads; 0: one per core"),
    I(blas_threads, 0, 256, NULL, "BLAS threads; 0: cores / threads (threads x blas_threads <= cores)"),
    I(http_threads, 1, 64, NULL, "HTTP polling threads (they never run the model)"),
    I(compute_nice, 0, 19, NULL, "nice value of the threads that run the model, so HTTP "
      "threads stay responsive under load; 0: same priority"),
    I(max_rows, 1, 4096, NULL, "most rows (images + CFG rows) in one denoising step"),
    B(batching, "true: all running jobs share each step; false: one job at a time"),
    B(pack_weights, "true: weights repacked at load, in their precision, for the engine's "
      "GEMM kernel entry (avx512, avx2, neon or c); false: kept as stored and run through BLAS (slower)"),
    S(compute, NULL, "'f32': every product in F32 (8-bit weights widened); 'int8': 8-bit "
      "products on VNNI CPUs (refused at start elsewhere)"),
    I(queue_capacity, 1, 1000000, NULL, "queued jobs before 429"),
    I(max_steps, 1, 100000, NULL, "most denoising steps per request"),
    I(max_images, 1, 4096, NULL, "most images per request"),
    D(max_cfg_scale, 1, 1000, "largest cfg_scale accepted"),
    I(request_timeout_s, 1, 86400, NULL, "a job not finished this long after submission fails (504)"),
    I(job_retention_s, 0, 604800, NULL, "finished jobs are kept this long"),
    I(job_retention_count, 0, 1000000, NULL, "and at most this many finished jobs are kept"),
    S(api_key, "DITMOE_API_KEY", "if set, required as 'Authorization: Bearer KEY' or 'X-Api-Key: KEY' "
      "(not for /health, /ready and static files)"),
    S(client_ip_header, NULL, "'X-Forwarded-For' or 'X-Real-IP': client address header, "
      "believed only from trusted_proxies; empty: use the peer address"),
    S(trusted_proxies, NULL, "comma-separated proxy addresses or CIDR prefixes (file: string or array)"),
    I(max_connections, 1, 100000, NULL, "open connections in all"),
    I(max_per_ip, 0, 100000, NULL, "open connections per peer address; 0: no limit"),
    I(conn_timeout_s, 1, 3600, NULL, "idle connection timeout in seconds"),
    I(header_timeout_s, 1, 3600, NULL, "a new connection's request head, and a body of at most "
      "64 KiB given by Content-Length, must arrive within this many seconds (408 beyond)"),
    I(body_timeout_s, 1, 3600, NULL, "a larger or chunked request body must arrive within this "
      "many seconds of its head (the connection is closed beyond)"),
    B(reuse_port, "true: SO_REUSEPORT, so several servers may share the port (the kernel "
      "splits connections between them); false: a port in use is a start-up error"),
    I(max_jobs_per_client, 0, 1000000, NULL, "queued and running jobs one client address may "
      "have (429 beyond); 0: no limit"),
    I(max_body_bytes, 64, 1 << 24, NULL, "largest request body (413 beyond)"),
    I(drain_timeout_s, 0, 3600, NULL, "on SIGTERM/SIGINT, running jobs get this long before cancellation"),
    I(stats_window_s, 1, 86400, NULL, "length of the recent window in /stats"),
    I(sse_keepalive_s, 0, 3600, NULL, "an event stream silent this long gets a ': keep-alive' "
      "comment line (for proxies' read timeouts); 0: never"),
    B(access_log, "one line per request on stderr"),
};
#define NFIELDS (sizeof FIELDS / sizeof FIELDS[0])

void srv_config_default(srv_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->listen, "127.0.0.1");
    c->port = 8080;
    c->http_threads = 2;
    c->compute_nice = 5;
    c->max_rows = 32;
    c->batching = 1;
    c->pack_weights = 1;
    strcpy(c->compute, "f32");
    c->queue_capacity = 64;
    c->max_steps = 1000;
    c->max_images = 16;
    c->max_cfg_scale = 20.0;
    c->request_timeout_s = 300;
    c->job_retention_s = 600;
    c->job_retention_count = 256;
    c->max_connections = 256;
    c->max_per_ip = 64;
    c->conn_timeout_s = 30;
    c->header_timeout_s = 10;
    c->body_timeout_s = 30;
    c->max_jobs_per_client = 16;
    c->max_body_bytes = 8192;
    c->drain_timeout_s = 10;
    c->stats_window_s = 60;
    c->sse_keepalive_s = 15;
    c->access_log = 1;
}

/* Other names servers commonly use for a setting (llama.cpp, uvicorn: --host). */
static const char *const ALIASES[][2] = {{"host", "listen"}};

static const field *find_field(const char *name)
{
    char norm[64];
    size_t i;
    for (i = 0; name[i] && i + 1 < sizeof norm; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    norm[i] = 0;
    for (size_t a = 0; a < sizeof ALIASES / sizeof ALIASES[0]; a++)
        if (!strcmp(norm, ALIASES[a][0]))
            snprintf(norm, sizeof norm, "%s", ALIASES[a][1]);
    for (size_t k = 0; k < NFIELDS; k++)
        if (!strcmp(FIELDS[k].name, norm))
            return &FIELDS[k];
    return NULL;
}

/* Edit distance of a and b ('-' and '_' alike), capped at 9. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int row[64];
    if (la > 62 || lb > 62)
        return 9;
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int same = a[i - 1] == b[j - 1] || (strchr("-_", a[i - 1]) && strchr("-_", b[j - 1]));
            int v = diag + !same;
            if (row[j] + 1 < v) v = row[j] + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            diag = row[j];
            row[j] = v;
        }
    }
    return row[lb] < 9 ? row[lb] : 9;
}

/* The known setting closest to an unknown name (a typo), or NULL. */
static const char *closest_field(const char *name)
{
    const char *best = NULL;
    int bd = 4; /* farther than 3 edits is no typo */
    for (size_t k = 0; k < NFIELDS; k++) {
        int d = edit_distance(name, FIELDS[k].name);
        if (d < bd) {
            bd = d;
            best = FIELDS[k].name;
        }
    }
    return best;
}

/* "unknown setting 'x' (did you mean 'y'? see --help)": what for the kind
 * of name, dash 1 to show it as an option (--max-rows). */
static void unknown_name(char *err, size_t errlen, const char *what, const char *name, int dash,
                         const char *see)
{
    const char *near = closest_field(name);
    char opt[64] = "";
    for (size_t i = 0; near && near[i] && i + 1 < sizeof opt; i++) {
        opt[i] = dash && near[i] == '_' ? '-' : near[i];
        opt[i + 1] = 0;
    }
    if (near)
        snprintf(err, errlen, "unknown %s '%s%s' (did you mean '%s%s'? see %s)", what,
                 dash ? "--" : "", name, dash ? "--" : "", opt, see);
    else
        snprintf(err, errlen, "unknown %s '%s%s' (see %s)", what, dash ? "--" : "", name, see);
}

static void describe_range(const field *f, char *buf, size_t n)
{
    switch (f->type) {
    case F_INT: snprintf(buf, n, "an integer in [%.0f, %.0f]", f->min, f->max); break;
    case F_BOOL: snprintf(buf, n, "true or false"); break;
    case F_DOUBLE: snprintf(buf, n, "a number in [%g, %g]", f->min, f->max); break;
    default: snprintf(buf, n, "a string of at most %zu bytes", f->size - 1); break;
    }
}

static int set_number(srv_config *c, const field *f, double v, char *err, size_t errlen)
{
    char range[96];
    describe_range(f, range, sizeof range);
    if (!isfinite(v) || v < f->min || v > f->max || (f->type != F_DOUBLE && v != floor(v))) {
        snprintf(err, errlen, "%s: %g is out of range: must be %s", f->name, v, range);
        return -1;
    }
    char *p = (char *)c + f->off;
    if (f->type == F_DOUBLE)
        *(double *)p = v;
    else
        *(int *)p = (int)v;
    return 0;
}

static int set_string(srv_config *c, const field *f, const char *v, char *err, size_t errlen)
{
    if (strlen(v) >= f->size) {
        snprintf(err, errlen, "%s: value is too long (at most %zu bytes)", f->name, f->size - 1);
        return -1;
    }
    memcpy((char *)c + f->off, v, strlen(v) + 1);
    return 0;
}

int srv_config_set(srv_config *c, const char *name, const char *value, char *err, size_t errlen)
{
    const field *f = find_field(name);
    if (!f) {
        unknown_name(err, errlen, "setting", name, 1, "--help");
        return -1;
    }
    if (f->type == F_STR)
        return set_string(c, f, value, err, errlen);
    if (f->type == F_BOOL) {
        if (!strcasecmp(value, "true") || !strcmp(value, "1") || !strcasecmp(value, "yes") ||
            !strcasecmp(value, "on"))
            return set_number(c, f, 1, err, errlen);
        if (!strcasecmp(value, "false") || !strcmp(value, "0") || !strcasecmp(value, "no") ||
            !strcasecmp(value, "off"))
            return set_number(c, f, 0, err, errlen);
        snprintf(err, errlen, "%s: '%s' is not a boolean: must be true or false", f->name, value);
        return -1;
    }
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (end == value || *end || errno) {
        char range[96];
        describe_range(f, range, sizeof range);
        snprintf(err, errlen, "%s: '%s' is not a number: must be %s", f->name, value, range);
        return -1;
    }
    return set_number(c, f, v, err, errlen);
}

/* A JSON array of strings becomes one comma-separated string. */
static int set_string_list(srv_config *c, const field *f, const dit_json *arr, char *err,
                           size_t errlen)
{
    char buf[1024] = "";
    size_t len = 0;
    for (size_t i = 0; i < dit_json_len(arr); i++) {
        const char *str = dit_json_str(dit_json_at(arr, i));
        if (!str) {
            snprintf(err, errlen, "%s: array elements must be strings", f->name);
            return -1;
        }
        int n = snprintf(buf + len, sizeof buf - len, "%s%s", len ? "," : "", str);
        if (n < 0 || (size_t)n >= sizeof buf - len) {
            snprintf(err, errlen, "%s: list is too long", f->name);
            return -1;
        }
        len += (size_t)n;
    }
    return set_string(c, f, buf, err, errlen);
}

static int apply_json_field(srv_config *c, const field *f, const dit_json *v, char *err,
                            size_t errlen)
{
    char range[96];
    describe_range(f, range, sizeof range);
    switch (f->type) {
    case F_STR:
        if (dit_json_type(v) == DIT_JSON_STRING)
            return set_string(c, f, dit_json_str(v), err, errlen);
        if (dit_json_type(v) == DIT_JSON_ARRAY && !strcmp(f->name, "trusted_proxies"))
            return set_string_list(c, f, v, err, errlen);
        break;
    case F_BOOL:
        if (dit_json_type(v) == DIT_JSON_BOOL)
            return set_number(c, f, dit_json_bool(v), err, errlen);
        break;
    default:
        if (dit_json_type(v) == DIT_JSON_NUMBER)
            return set_number(c, f, dit_json_num(v), err, errlen);
        break;
    }
    snprintf(err, errlen, "%s: wrong type: must be %s", f->name, range);
    return -1;
}

int srv_config_load_file(srv_config *c, const char *path, char *err, size_t errlen)
{
    char msg[384];
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            char *t = realloc(text, cap = cap * 2 + 8192);
            if (!t) { free(text); fclose(fp); snprintf(err, errlen, "%s: out of memory", path); return -1; }
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len - 1, fp);
        len += n;
        if (n == 0)
            break;
    }
    fclose(fp);
    text[len] = 0;
    dit_json_doc *doc = NULL;
    char jerr[200];
    int rc = dit_json_parse(text, len, &doc, jerr, sizeof jerr);
    free(text);
    if (rc) {
        snprintf(err, errlen, "%s: not valid JSON: %s", path, jerr);
        return -1;
    }
    const dit_json *root = dit_json_root(doc);
    if (dit_json_type(root) != DIT_JSON_OBJECT) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        dit_json_free(doc);
        return -1;
    }
    for (size_t i = 0; i < dit_json_len(root); i++) {
        const char *key = dit_json_str(dit_json_key(root, i));
        const dit_json *it = dit_json_at(root, i);
        if (key[0] == '_')
            continue; /* "_comment" and the like */
        const field *f = find_field(key);
        if (!f || strlen(key) != dit_json_len(dit_json_key(root, i))) {
            char msg[320];
            unknown_name(msg, sizeof msg, "field", key, 0, "config/README.md");
            snprintf(err, errlen, "%s: %s", path, msg);
            rc = -1;
            break;
        }
        if (apply_json_field(c, f, it, msg, sizeof msg)) {
            snprintf(err, errlen, "%s: %s", path, msg);
            rc = -1;
            break;
        }
    }
    dit_json_free(doc);
    return rc;
}

int srv_config_load_env(srv_config *c, char *err, size_t errlen)
{
    char msg[384];
    for (size_t k = 0; k < NFIELDS; k++) {
        const char *v = FIELDS[k].env ? getenv(FIELDS[k].env) : NULL;
        if (!v)
            continue;
        if (srv_config_set(c, FIELDS[k].name, v, msg, sizeof msg)) {
            snprintf(err, errlen, "%s: %s", FIELDS[k].env, msg);
            return -1;
        }
    }
    return 0;
}

static const char *config_path(int argc, char **argv)
{
    const char *path = getenv("DITMOE_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
    }
    return path && *path ? path : NULL;
}

int srv_config_from_args(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen)
{
    srv_config_default(c);
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            srv_config_usage(out);
            return 1;
        }
    const char *path = config_path(argc, argv);
    if (path && srv_config_load_file(c, path, err, errlen))
        return -1;
    if (srv_config_load_env(c, err, errlen))
        return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2)) {
            snprintf(err, errlen, "unexpected argument '%s' (options are --name value)", a);
            return -1;
        }
        a += 2;
        char name[64];
        const char *eq = strchr(a, '='), *value;
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen >= sizeof name) {
            snprintf(err, errlen, "unknown option '--%.64s'", a);
            return -1;
        }
        memcpy(name, a, nlen);
        name[nlen] = 0;
        const field *f = find_field(name);
        if (eq) {
            value = eq + 1;
        } else if (f && f->type == F_BOOL && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
            value = "true"; /* a bare boolean flag */
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            snprintf(err, errlen, "option '--%s' needs a value", name);
            return -1;
        }
        if (!strcmp(name, "config"))
            continue;
        if (srv_config_set(c, name, value, err, errlen))
            return -1;
    }
    return srv_config_check(c, err, errlen);
}

int srv_config_check(const srv_config *c, char *err, size_t errlen)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, c->listen, addr) != 1 && inet_pton(AF_INET6, c->listen, addr) != 1) {
        snprintf(err, errlen, "listen: '%s' is not an IPv4 or IPv6 address", c->listen);
        return -1;
    }
    size_t n = strlen(c->instance_id);
    if (n > SRV_INSTANCE_MAX || strspn(c->instance_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                       "abcdefghijklmnopqrstuvwxyz0123456789_-") != n) {
        snprintf(err, errlen, "instance_id: '%s' must be at most %d letters, digits, '_' or '-' "
                 "(it goes into job ids and URLs)", c->instance_id, SRV_INSTANCE_MAX);
        return -1;
    }
    if (c->client_ip_header[0] && strcasecmp(c->client_ip_header, "X-Forwarded-For") &&
        strcasecmp(c->client_ip_header, "X-Real-IP")) {
        snprintf(err, errlen, "client_ip_header: '%s' must be empty, X-Forwarded-For or X-Real-IP",
                 c->client_ip_header);
        return -1;
    }
    if (dit_compute_parse(c->compute) < 0) {
        snprintf(err, errlen, "compute: '%s' must be f32 or int8", c->compute);
        return -1;
    }
    if (c->client_ip_header[0] && !c->trusted_proxies[0]) {
        snprintf(err, errlen, "client_ip_header is set but trusted_proxies is empty: "
                 "the header would never be believed");
        return -1;
    }
    return 0;
}

void srv_config_usage(FILE *out)
{
    srv_config d;
    srv_config_default(&d);
    fprintf(out, "usage: ditmoe-server [--config FILE] [--name value ...]\n"
                 "       ditmoe-server --healthcheck [URL] [--config FILE] [--name value ...]\n\n"
                 "Settings (JSON file keys are the names with '_': see config/server.json;\n"
                 "command line: --name value or --name=value):\n");
    for (size_t k = 0; k < NFIELDS; k++) {
        const field *f = &FIELDS[k];
        const char *p = (const char *)&d + f->off;
        char def[128];
        switch (f->type) {
        case F_INT: snprintf(def, sizeof def, "%d", *(const int *)p); break;
        case F_BOOL: snprintf(def, sizeof def, "%s", *(const int *)p ? "true" : "false"); break;
        case F_DOUBLE: snprintf(def, sizeof def, "%g", *(const double *)p); break;
        default: snprintf(def, sizeof def, "\"%s\"", p); break;
        }
        char opt[32];
        size_t i = 0;
        for (; f->name[i] && i + 1 < sizeof opt; i++)
            opt[i] = f->name[i] == '_' ? '-' : f->name[i];
        opt[i] = 0;
        fprintf(out, "  --%-20s %s (default %s%s%s)\n", opt, f->help, def,
                f->env ? "; env " : "", f->env ? f->env : "");
    }
    fprintf(out, "  --%-20s JSON settings file (env DITMOE_CONFIG)\n", "config");
    fprintf(out, "\nditmoe-server --healthcheck [http://HOST[:PORT][/PATH]] [settings]: exits 0 if "
                 "GET /health\n(or PATH) on the configured (or given) address answers 200 within "
                 "2 s, else 1.\n");
}
