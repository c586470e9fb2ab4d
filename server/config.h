/* config.h: ditmoe-server settings.
 *
 * Every setting has a default, may be set in a JSON file (config/server.json,
 * or --config PATH / DITMOE_CONFIG), the common ones by environment variable
 * (DITMOE_LISTEN, DITMOE_PORT, DITMOE_MODEL, DITMOE_THREADS, DITMOE_API_KEY,
 * DITMOE_INSTANCE_ID), and all of
 * them on the command line (--name value or --name=value; '-' and '_' are
 * the same). Later sources win: defaults, file, environment, command line.
 * config/README.md documents each field; srv_config_usage prints the same.
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stdio.h>

#define SRV_INSTANCE_MAX 32   /* longest instance_id */

typedef struct srv_config {
    char listen[64];          /* address to bind: IPv4 or IPv6 literal */
    int port;                 /* 0 = any free port (printed at start) */
    char model[1024];         /* model directory or file; "" = the default */
    char web_root[1024];      /* static files served at /; "" = looked up */
    char instance_id[SRV_INSTANCE_MAX + 1]; /* job id prefix; "" = random */
    int threads;              /* engine worker threads; 0 = auto */
    int blas_threads;         /* BLAS threads per GEMM; 0 = auto */
    int http_threads;         /* libmicrohttpd polling threads */
    int compute_nice;         /* nice value of the model's threads (0..19) */
    int max_rows;             /* rows per denoising step, CFG rows included */
    int batching;             /* 1: jobs share steps; 0: one job at a time */
    int pack_weights;         /* dit_model_settings.pack_weights */
    char compute[8];          /* "f32" or "int8": dit_model_settings.compute */
    int queue_capacity;       /* queued (not yet running) jobs */
    int max_steps;            /* per request */
    int max_images;           /* per request */
    double max_cfg_scale;     /* per request */
    int request_timeout_s;    /* a job not done this long after submit fails */
    int job_retention_s;      /* finished jobs are kept this long ... */
    int job_retention_count;  /* ... and at most this many */
    char api_key[256];        /* "" = no key required */
    char client_ip_header[32];/* "", "X-Forwarded-For" or "X-Real-IP" */
    char trusted_proxies[512];/* comma-separated addresses or CIDR prefixes */
    int max_connections;      /* all clients */
    int max_per_ip;           /* per client address; 0 = no limit */
    int conn_timeout_s;       /* idle connection timeout */
    int header_timeout_s;     /* a request's head (and small body) must arrive in this */
    int body_timeout_s;       /* a body read by libmicrohttpd must arrive in this */
    int reuse_port;           /* 1: SO_REUSEPORT, several servers share the port */
    int max_jobs_per_client;  /* queued + running jobs per client address; 0 = no limit */
    int max_body_bytes;       /* request body cap (413 beyond) */
    int drain_timeout_s;      /* on SIGTERM: time given to running jobs */
    int stats_window_s;       /* /stats "recent" window */
    int sse_keepalive_s;      /* comment line on a silent event stream; 0 = off */
    int access_log;           /* 1: one line per request on stderr */
} srv_config;

/* Fills c with the defaults. */
void srv_config_default(srv_config *c);

/* Applies the JSON file at path. Unknown keys and wrong types are errors.
 * Returns 0, or -1 with err naming the file, field and problem. */
int srv_config_load_file(srv_config *c, const char *path, char *err, size_t errlen);

/* Applies the environment variables (DITMOE_LISTEN, DITMOE_PORT, ...). */
int srv_config_load_env(srv_config *c, char *err, size_t errlen);

/* Sets one field from text (name as in the file, '-' allowed for '_').
 * Returns 0, or -1 with err naming the field and its allowed values. */
int srv_config_set(srv_config *c, const char *name, const char *value,
                   char *err, size_t errlen);

/* Loads everything in order: defaults, the config file (--config PATH,
 * else DITMOE_CONFIG, else none), environment, then argv options.
 * Returns 0, 1 when --help was given (usage printed to out), -1 on error. */
int srv_config_from_args(srv_config *c, int argc, char **argv, FILE *out,
                         char *err, size_t errlen);

/* Prints every field with its default and meaning. */
void srv_config_usage(FILE *out);

/* Checks values a field's range cannot (listen is an address, instance_id
 * is URL-safe) and cross-field constraints (the client IP header needs
 * trusted proxies). Returns 0 or -1 with err. */
int srv_config_check(const srv_config *c, char *err, size_t errlen);

#endif
