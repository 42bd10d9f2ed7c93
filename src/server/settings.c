#include "settings.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void srv_config_defaults(srv_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->port = 8787;
    cfg->vae_split = 4;
    cfg->workers = 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = cores > 0 ? (int)cores : 1;
    cfg->max_batch_delay_ms = 10;
    cfg->max_queue = 64;
    cfg->max_body_bytes = 64u << 20;
    cfg->max_uri_bytes = 8u << 10;
    cfg->max_header_bytes = 16u << 10;
    cfg->max_image_pixels = 1024 * 1024;
    cfg->max_images_per_request = 32;
    cfg->request_timeout_ms = 120000;
    cfg->memory_budget_bytes = (size_t)2 << 30;
    cfg->http_threads = 2;
    cfg->decode_threads = 1;
    cfg->max_jpeg_scans = 100;
    cfg->decode_timeout_ms = 5000;
    cfg->max_connections = 1024;
    cfg->max_connections_per_client = 64;
    cfg->header_timeout_ms = 10000;
    cfg->body_timeout_ms = 60000;
    cfg->idle_timeout_ms = 30000;
    cfg->max_requests_per_connection = 1000;
    cfg->stall_timeout_ms = 120000;
    cfg->log_level = LOG_INFO;
    cfg->shutdown_timeout_ms = 30000;
    cfg->bare_model = -1;
}

static int parse_long(const char *value, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_listen(srv_config *cfg, const char *value, char *err)
{
    const char *colon = strrchr(value, ':');
    long port;
    if (!colon || parse_long(colon + 1, 0, 65535, &port) != 0) /* 0: any free port */
        return ld_fail(err, LD_EINVAL, "listen: want HOST:PORT, got '%s'", value);
    size_t host_len = (size_t)(colon - value);
    if (host_len == 0 || host_len >= sizeof cfg->listen_host)
        return ld_fail(err, LD_EINVAL, "listen: bad host in '%s'", value);
    /* [::1]:8787 */
    if (value[0] == '[' && host_len > 2 && value[host_len - 1] == ']') {
        value++;
        host_len -= 2;
    }
    memcpy(cfg->listen_host, value, host_len);
    cfg->listen_host[host_len] = '\0';
    cfg->port = (int)port;
    return LD_OK;
}

static int parse_level(const char *value, srv_log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(value, names[i]) == 0) {
            *out = (srv_log_level)i;
            return 0;
        }
    return -1;
}

static int copy_string(char *dst, size_t size, const char *key, const char *value, char *err)
{
    if (strlen(value) >= size)
        return ld_fail(err, LD_EINVAL, "%s: value too long", key);
    memcpy(dst, value, strlen(value) + 1);
    return LD_OK;
}

typedef struct {
    const char *key;
    size_t offset;
    long min, max;
} int_setting;

#define INT_SETTING(name, lo, hi) {#name, offsetof(srv_config, name), lo, hi}
static const int_setting int_settings[] = {
    INT_SETTING(vae_split, 1, 1024),
    INT_SETTING(workers, 1, 256),
    INT_SETTING(threads, 1, 1024),
    INT_SETTING(max_batch_delay_ms, 0, 60000),
    INT_SETTING(max_queue, 1, 1 << 20),
    INT_SETTING(max_images_per_request, 1, 1 << 16),
    INT_SETTING(request_timeout_ms, 1, 24 * 3600 * 1000),
    INT_SETTING(http_threads, 1, 64),
    INT_SETTING(decode_threads, 1, 64),
    INT_SETTING(max_jpeg_scans, 1, 100000),
    INT_SETTING(decode_timeout_ms, 1, 3600 * 1000),
    INT_SETTING(max_connections, 1, 1 << 16),
    INT_SETTING(max_connections_per_client, 0, 1 << 16),
    INT_SETTING(header_timeout_ms, 100, 3600 * 1000),
    INT_SETTING(body_timeout_ms, 100, 24 * 3600 * 1000),
    INT_SETTING(idle_timeout_ms, 1000, 24 * 3600 * 1000),
    INT_SETTING(max_requests_per_connection, 1, 1 << 30),
    INT_SETTING(stall_timeout_ms, 1000, 24 * 3600 * 1000),
    INT_SETTING(shutdown_timeout_ms, 0, 3600 * 1000),
};

/* Byte counts take an optional K, M or G suffix (powers of 1024). */
static int parse_bytes(const char *value, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)value[0]))
        return -1;
    unsigned long long v = strtoull(value, &end, 10);
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    if (shift)
        end++;
    if (errno || *end || v > (max >> shift) || (v << shift) < min)
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

typedef struct {
    const char *key;
    size_t offset, size; /* a size_t or a uint64_t field */
    uint64_t min, max;
} bytes_setting;

#define BYTES_SETTING(name, lo, hi) \
    {#name, offsetof(srv_config, name), sizeof(((srv_config *)0)->name), lo, hi}
static const bytes_setting bytes_settings[] = {
    BYTES_SETTING(max_body_bytes, 1, (uint64_t)1 << 40),
    BYTES_SETTING(max_uri_bytes, 256, 1u << 20),
    BYTES_SETTING(max_header_bytes, 1024, 1u << 20),
    BYTES_SETTING(max_image_pixels, 1, (uint64_t)1 << 40),
    BYTES_SETTING(memory_budget_bytes, (uint64_t)16 << 20, (uint64_t)1 << 50),
};

static int set_bytes(srv_config *cfg, const bytes_setting *s, const char *value, char *err)
{
    uint64_t v;
    if (parse_bytes(value, s->min, s->max, &v) != 0)
        return ld_fail(err, LD_EINVAL, "%s: want an integer from %llu to %llu (K, M, G allowed), "
                       "got '%.40s'", s->key, (unsigned long long)s->min,
                       (unsigned long long)s->max, value);
    if (s->size == sizeof(uint64_t))
        *(uint64_t *)((char *)cfg + s->offset) = v;
    else
        *(size_t *)((char *)cfg + s->offset) = (size_t)v;
    return LD_OK;
}

static int set_option(srv_config *cfg, const char *key, const char *value, char *err);

/* A model's name: 1-63 of [A-Za-z0-9._-] (it goes into URLs, logs and
 * metric labels as it is). */
static bool valid_model_name(const char *name, size_t len)
{
    if (len == 0 || len >= SRV_MODEL_NAME_LEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
            return false;
    return true;
}

/* `model.NAME = PATH` (name non-NULL) or the bare `model = PATH`: a model
 * given again keeps its place and takes the new path. */
static int set_model(srv_config *cfg, const char *name, const char *path, char *err)
{
    if (name && !valid_model_name(name, strlen(name)))
        return ld_fail(err, LD_EINVAL, "model.%.64s: a model's name is 1 to %d of A-Z a-z 0-9 . _ -",
                       name, SRV_MODEL_NAME_LEN - 1);
    if (!*path)
        return ld_fail(err, LD_EINVAL, "model%s%s: want a path", name ? "." : "", name ? name : "");
    int at = name ? -1 : cfg->bare_model;
    for (int i = 0; name && i < cfg->n_models; i++)
        if (i != cfg->bare_model && strcmp(cfg->models[i].name, name) == 0)
            at = i;
    if (at < 0) {
        if (cfg->n_models == SRV_MAX_MODELS)
            return ld_fail(err, LD_EINVAL, "more than %d models", SRV_MAX_MODELS);
        at = cfg->n_models++;
        if (!name)
            cfg->bare_model = at;
    }
    srv_model_spec *spec = &cfg->models[at];
    snprintf(spec->name, sizeof spec->name, "%s", name ? name : "");
    return copy_string(spec->path, sizeof spec->path, "model", path, err);
}

/* One setting by name, from the file or a flag. */
static int set_option(srv_config *cfg, const char *key, const char *value, char *err)
{
    long v;
    for (size_t i = 0; i < sizeof int_settings / sizeof int_settings[0]; i++) {
        const int_setting *s = &int_settings[i];
        if (strcmp(key, s->key) != 0)
            continue;
        if (parse_long(value, s->min, s->max, &v) != 0)
            return ld_fail(err, LD_EINVAL, "%s: want an integer from %ld to %ld, got '%s'", key,
                           s->min, s->max, value);
        *(int *)((char *)cfg + s->offset) = (int)v;
        return LD_OK;
    }
    for (size_t i = 0; i < sizeof bytes_settings / sizeof bytes_settings[0]; i++)
        if (strcmp(key, bytes_settings[i].key) == 0)
            return set_bytes(cfg, &bytes_settings[i], value, err);
    if (strcmp(key, "drain_timeout_ms") == 0) /* the old name, before shutdown_timeout_ms */
        return set_option(cfg, "shutdown_timeout_ms", value, err);
    if (strcmp(key, "listen") == 0)
        return parse_listen(cfg, value, err);
    if (strcmp(key, "model") == 0)
        return set_model(cfg, NULL, value, err);
    if (strncmp(key, "model.", 6) == 0)
        return set_model(cfg, key + 6, value, err);
    if (strcmp(key, "default_model") == 0)
        return valid_model_name(value, strlen(value))
                   ? copy_string(cfg->default_model, sizeof cfg->default_model, key, value, err)
                   : ld_fail(err, LD_EINVAL, "default_model: want a model's name");
    if (strcmp(key, "api_key_file") == 0)
        return copy_string(cfg->api_key_file, sizeof cfg->api_key_file, key, value, err);
    if (strcmp(key, "log_file") == 0)
        return copy_string(cfg->log_file, sizeof cfg->log_file, key, value, err);
    if (strcmp(key, "log_level") == 0)
        return parse_level(value, &cfg->log_level) == 0
                   ? LD_OK
                   : ld_fail(err, LD_EINVAL, "log_level: want error, warn, info or debug");
    if (strcmp(key, "kernel") == 0) {
        char why[LD_ERR_LEN];
        if (ld_kernel_parse(value, &cfg->kernel, why) != LD_OK)
            return ld_fail(err, LD_EINVAL, "kernel: %s", why);
        if (!ld_kernel_available(cfg->kernel))
            return ld_fail(err, LD_EINVAL, "kernel: this CPU or build has no %s kernel "
                           "(auto picks the best it has)", value);
        return LD_OK;
    }
    return ld_fail(err, LD_EINVAL, "unknown setting '%s'", key);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

int srv_config_load_file(srv_config *cfg, const char *path, char *err)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    char line[8192], inner[LD_ERR_LEN];
    int rc = LD_OK, lineno = 0;
    while (rc == LD_OK && fgets(line, sizeof line, fp)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *text = trim(line);
        if (!*text)
            continue;
        char *eq = strchr(text, '=');
        if (!eq) {
            rc = ld_fail(err, LD_EINVAL, "%s:%d: want 'key = value'", path, lineno);
            break;
        }
        *eq = '\0';
        if ((rc = set_option(cfg, trim(text), trim(eq + 1), inner)) != LD_OK)
            ld_fail(err, rc, "%s:%d: %s", path, lineno, inner);
    }
    fclose(fp);
    return rc;
}

void srv_config_usage(FILE *fp)
{
    fprintf(fp,
            "usage: latentd [-c FILE] [--model [NAME=]PATH]... [--listen HOST:PORT]\n"
            "               [--vae-split N]\n"
            "               [--workers N] [--threads N] [--kernel NAME] [--max-batch-delay-ms N]\n"
            "               [--max-queue N] [--log-level LEVEL] [--log-file PATH]\n"
            "               [--api-key-file PATH] [--set key=value]...\n"
            "Flags override the file; --set takes any setting of latentd.conf.\n"
            "--model NAME=PATH adds a named model (repeatable, like model.NAME = PATH);\n"
            "--model PATH is the single model named after its folder.\n");
}

/* Flags named like the file's keys, with '-' for '_'. */
static const struct option flags[] = {
    {"config", required_argument, 0, 'c'},
    {"model", required_argument, 0, 0},
    {"listen", required_argument, 0, 0},
    {"vae-split", required_argument, 0, 0},
    {"workers", required_argument, 0, 0},
    {"threads", required_argument, 0, 0},
    {"kernel", required_argument, 0, 0},
    {"max-batch-delay-ms", required_argument, 0, 0},
    {"max-queue", required_argument, 0, 0},
    {"log-level", required_argument, 0, 0},
    {"log-file", required_argument, 0, 0},
    {"api-key-file", required_argument, 0, 0},
    {"set", required_argument, 0, 's'},
    {"help", no_argument, 0, 'h'},
    {0, 0, 0, 0},
};

static int apply_flag(srv_config *cfg, const char *name, const char *value, char *err)
{
    if (strcmp(name, "model") == 0) { /* NAME=PATH, or a bare PATH */
        const char *eq = strchr(value, '=');
        char model_name[SRV_MODEL_NAME_LEN];
        if (eq && valid_model_name(value, (size_t)(eq - value))) {
            snprintf(model_name, sizeof model_name, "%.*s", (int)(eq - value), value);
            return set_model(cfg, model_name, eq + 1, err);
        }
        return set_model(cfg, NULL, value, err);
    }
    char key[64];
    snprintf(key, sizeof key, "%s", name);
    for (char *p = key; *p; p++)
        if (*p == '-')
            *p = '_';
    return set_option(cfg, key, value, err);
}

int srv_config_from_args(srv_config *cfg, int argc, char **argv, char *err)
{
    int c, index;
    /* first pass: the file, so that flags override it whatever their order */
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", flags, &index)) != -1) {
        if (c == 'h')
            return 1;
        if (c == '?')
            return ld_fail(err, LD_EINVAL, "bad command line (see --help)");
        if (c == 'c') {
            int rc = srv_config_load_file(cfg, optarg, err);
            if (rc != LD_OK)
                return rc;
        }
    }
    if (optind < argc)
        return ld_fail(err, LD_EINVAL, "unexpected argument '%s'", argv[optind]);
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", flags, &index)) != -1) {
        int rc = LD_OK;
        if (c == 0) {
            rc = apply_flag(cfg, flags[index].name, optarg, err);
        } else if (c == 's') {
            char kv[8192];
            snprintf(kv, sizeof kv, "%s", optarg);
            char *eq = strchr(kv, '=');
            rc = eq ? (*eq = '\0', set_option(cfg, trim(kv), trim(eq + 1), err))
                    : ld_fail(err, LD_EINVAL, "--set wants key=value");
        }
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

int srv_config_finish(srv_config *cfg, char *err)
{
    if (cfg->n_models == 0)
        return ld_fail(err, LD_EINVAL, "no model: set 'model' or 'model.NAME' in the config or "
                       "pass --model");
    if (cfg->bare_model >= 0) { /* named after its folder or file, as the model names itself */
        srv_model_spec *bare = &cfg->models[cfg->bare_model];
        char copy[sizeof bare->path];
        snprintf(copy, sizeof copy, "%s", bare->path);
        size_t len = strlen(copy);
        while (len > 1 && copy[len - 1] == '/')
            copy[--len] = '\0';
        const char *slash = strrchr(copy, '/');
        snprintf(bare->name, sizeof bare->name, "%s", slash && slash[1] ? slash + 1 : copy);
        /* a folder may be named anything; the name goes into URLs, logs, metric
         * labels and STATUS= lines as it is, so it keeps to the name alphabet */
        for (char *c = bare->name; *c; c++)
            if (!isalnum((unsigned char)*c) && !strchr("._-", *c))
                *c = '_';
    }
    for (int i = 0; i < cfg->n_models; i++)
        for (int k = 0; k < i; k++)
            if (strcmp(cfg->models[i].name, cfg->models[k].name) == 0)
                return ld_fail(err, LD_EINVAL, "two models are named '%s': name the one in "
                               "'model' with model.NAME instead", cfg->models[i].name);
    if (cfg->default_model[0] && !srv_config_model(cfg, cfg->default_model))
        return ld_fail(err, LD_EINVAL, "default_model: no model is named '%s'",
                       cfg->default_model);
    if (!cfg->api_key_file[0])
        return LD_OK;
    FILE *fp = fopen(cfg->api_key_file, "r");
    if (!fp)
        return ld_fail(err, LD_EIO, "%s: %s", cfg->api_key_file, strerror(errno));
    char line[sizeof cfg->api_key + 2] = "";
    if (!fgets(line, sizeof line, fp))
        line[0] = '\0';
    fclose(fp);
    const char *key = trim(line);
    if (strlen(key) < 8 || strlen(key) >= sizeof cfg->api_key)
        return ld_fail(err, LD_EINVAL, "%s: the API key must be 8 to %zu characters",
                       cfg->api_key_file, sizeof cfg->api_key - 1);
    snprintf(cfg->api_key, sizeof cfg->api_key, "%s", key);
    return LD_OK;
}

/* Append ", key" (or "key") to out; a list that does not fit ends in "...". */
static void add_key(char *out, size_t size, const char *key)
{
    const size_t used = strlen(out);
    if (used + strlen(key) + 6 >= size) {
        if (used + 4 < size && (used < 3 || strcmp(out + used - 3, "...") != 0))
            strcat(out, "...");
        return;
    }
    snprintf(out + used, size - used, "%s%s", used ? ", " : "", key);
}

int srv_config_changes(const srv_config *a, const srv_config *b, char *out, size_t size)
{
    out[0] = '\0';
    int n = 0;
    for (size_t i = 0; i < sizeof int_settings / sizeof int_settings[0]; i++) {
        const size_t at = int_settings[i].offset;
        if (*(const int *)((const char *)a + at) != *(const int *)((const char *)b + at))
            add_key(out, size, int_settings[i].key), n++;
    }
    for (size_t i = 0; i < sizeof bytes_settings / sizeof bytes_settings[0]; i++) {
        const bytes_setting *s = &bytes_settings[i];
        if (memcmp((const char *)a + s->offset, (const char *)b + s->offset, s->size) != 0)
            add_key(out, size, s->key), n++;
    }
    const struct {
        const char *key;
        bool changed;
    } others[] = {
        {"listen", strcmp(a->listen_host, b->listen_host) != 0 || a->port != b->port},
        {"api_key_file", strcmp(a->api_key_file, b->api_key_file) != 0 ||
                             strcmp(a->api_key, b->api_key) != 0},
        {"log_file", strcmp(a->log_file, b->log_file) != 0},
        {"log_level", a->log_level != b->log_level},
        {"kernel", a->kernel != b->kernel},
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (others[i].changed)
            add_key(out, size, others[i].key), n++;
    return n;
}

const srv_model_spec *srv_config_model(const srv_config *cfg, const char *name)
{
    for (int i = 0; i < cfg->n_models; i++)
        if (strcmp(cfg->models[i].name, name) == 0)
            return &cfg->models[i];
    return NULL;
}

const srv_model_spec *srv_config_default_model(const srv_config *cfg)
{
    const srv_model_spec *named = cfg->default_model[0] ? srv_config_model(cfg, cfg->default_model)
                                                        : NULL;
    return named ? named : cfg->n_models ? &cfg->models[0] : NULL;
}
