/* latentd-load: a load and abuse test of latentd's HTTP API (see tests/load/README.md).
 *
 * Starts a latentd on 127.0.0.1 (or attaches to one), takes quiet reference answers,
 * measures the unloaded throughput with a few clients, then attacks the daemon for a
 * bounded time with many clients of several kinds (keep-alive or not; JSON, multipart
 * and raw bodies; slowloris; slow bodies; uploads cut short; clients that leave while
 * queued; slow readers) while it probes /healthz and samples the daemon's RSS, threads
 * and open files. Every 200 answer is checked against the fixtures' expected latents.
 * The slowloris mode holds many connections that send a header byte every few seconds
 * and checks that /healthz and an encode still answer promptly meanwhile.
 * It prints a table and "N passed, N failed", and exits 1 when a check failed.
 *
 * Plain sockets and pthreads, one thread per client; jansson reads safetensors headers
 * and JSON answers, libpng tiles a fixture into larger images. Traffic goes to
 * 127.0.0.1 only (sources 127.x.y.z, all loopback, so per-client limits see clients). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <png.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ================================================================ options */

/* Roles a client thread plays. The first block is what --mix weighs. */
typedef enum {
    R_KEEPALIVE, R_CLOSE, R_SLOW_BODY, R_SLOWLORIS, R_ABORT_UPLOAD, R_ABORT_QUEUED, R_SLOW_READ,
    N_MIX_ROLES,
    R_REFERENCE = N_MIX_ROLES, R_CALIBRATE, R_SLOW_CONN, R_ENCODE_PROBE,
    N_ROLES
} role;
static const char *const role_names[N_ROLES] = {
    "keepalive", "close", "slow-body", "slowloris", "abort-upload", "abort-queued", "slow-read",
    "reference", "unloaded", "slow-conn", "encode-probe"};

typedef struct {
    const char *bin, *encoder_cli, *fixtures, *model, *workdir;
    bool run_overload, run_slowloris, keep_workdir, verbose;
    int attach_port;
    pid_t attach_pid;
    const char *daemon_args[128];
    int n_daemon_args;
    /* unloaded phase */
    int base_clients, calib_requests;
    double calib_seconds;
    /* overload phase */
    int clients;
    double duration, grace, patience;
    int mix[N_MIX_ROLES];
    int backoff_ms, abandon_pause_ms;
    double min_ratio, min_mpx_ratio;
    /* slow clients */
    int slow_conns;
    double slow_interval, slow_hold, slow_max_hold;
    int slow_body_bytes, slow_body_ms, slow_read_bytes, slow_read_ms;
    /* probes and bounds */
    double healthz_deadline, encode_deadline, start_timeout, drain_wait, settle, stop_timeout;
    int probe_ms;
    long rss_limit_mb;
    double tol;
    int spread, attackers;
    unsigned seed;
} options;

static options O = {
    .model = "tiny-sd",
    .run_overload = true, .run_slowloris = true,
    .base_clients = 4, .calib_seconds = 10, .calib_requests = 0,
    .clients = 128, .duration = 25, .grace = 15, .patience = 15,
    .mix = {40, 20, 6, 10, 8, 6, 10},
    .backoff_ms = 100, .abandon_pause_ms = 2000, .min_ratio = 0.8, .min_mpx_ratio = 0.6,
    .slow_conns = 130, .slow_interval = 8, .slow_hold = 20, .slow_max_hold = 0,
    .slow_body_bytes = 1024, .slow_body_ms = 500, .slow_read_bytes = 1024, .slow_read_ms = 100,
    .healthz_deadline = 2, .encode_deadline = 5, .start_timeout = 30, .drain_wait = 30,
    .settle = 5, .stop_timeout = 30, .probe_ms = 250,
    .rss_limit_mb = 0, .tol = 1e-4, .spread = -1, .attackers = 1, .seed = 1,
};

/* ================================================================ small things */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double T0; /* program start, for log stamps */

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stdout, "[%6.1f] %s\n", now() - T0, line);
    fflush(stdout);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("latentd-load: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ULL;
}

static double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, fp)) > 0) {
        n += got;
        if (n == cap)
            buf = xrealloc(buf, cap *= 2);
    }
    fclose(fp);
    *len = n;
    return buf;
}

static bool write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return false;
    bool ok = fwrite(data, 1, len, fp) == len;
    return fclose(fp) == 0 && ok;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *in, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *o++ = b64chars[v >> 18 & 63];
        *o++ = b64chars[v >> 12 & 63];
        *o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64chars[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* NULL on a malformed string */
static uint8_t *b64_decode(const char *in, size_t *n)
{
    static int8_t table[256];
    static atomic_bool ready;
    if (!atomic_load(&ready)) {
        memset(table, -1, sizeof table);
        for (int i = 0; i < 64; i++)
            table[(uint8_t)b64chars[i]] = (int8_t)i;
        atomic_store(&ready, true);
    }
    size_t len = strlen(in);
    uint8_t *out = xmalloc(len / 4 * 3 + 3);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=')
            break;
        int v = table[(uint8_t)in[i]];
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    *n = o;
    return out;
}

/* ================================================================ tensors */

typedef struct {
    int ndim;
    int64_t shape[4];
    size_t numel;
    float *data; /* malloc'd */
} tensor;

static bool parse_shape(json_t *arr, tensor *t)
{
    if (!json_is_array(arr) || json_array_size(arr) < 1 || json_array_size(arr) > 4)
        return false;
    t->ndim = (int)json_array_size(arr);
    t->numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(arr, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (1 << 24))
            return false;
        t->shape[i] = json_integer_value(d);
        t->numel *= (size_t)t->shape[i];
    }
    return true;
}

/* Tensor `name` (F32) out of a safetensors image. */
static bool st_tensor(const uint8_t *buf, size_t len, const char *name, tensor *t, char *why,
                      size_t wl)
{
    memset(t, 0, sizeof *t);
    if (len < 8) {
        snprintf(why, wl, "safetensors: %zu bytes", len);
        return false;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > len - 8) {
        snprintf(why, wl, "safetensors: header of %llu bytes in %zu", (unsigned long long)hlen, len);
        return false;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, 0, &je);
    json_t *e = root ? json_object_get(root, name) : NULL;
    json_t *off = e ? json_object_get(e, "data_offsets") : NULL;
    bool ok = false;
    if (!root)
        snprintf(why, wl, "safetensors: header is not JSON (%s)", je.text);
    else if (!e)
        snprintf(why, wl, "safetensors: no tensor '%s'", name);
    else if (!json_is_string(json_object_get(e, "dtype")) ||
             strcmp(json_string_value(json_object_get(e, "dtype")), "F32") != 0)
        snprintf(why, wl, "safetensors: '%s' is not F32", name);
    else if (!parse_shape(json_object_get(e, "shape"), t))
        snprintf(why, wl, "safetensors: '%s' has a bad shape", name);
    else if (!json_is_array(off) || json_array_size(off) != 2)
        snprintf(why, wl, "safetensors: '%s' has bad offsets", name);
    else {
        json_int_t b = json_integer_value(json_array_get(off, 0));
        json_int_t en = json_integer_value(json_array_get(off, 1));
        size_t avail = len - 8 - (size_t)hlen;
        if (b < 0 || en < b || (size_t)en > avail || (size_t)(en - b) != t->numel * 4) {
            snprintf(why, wl, "safetensors: '%s' offsets [%lld, %lld] do not fit", name,
                     (long long)b, (long long)en);
        } else {
            t->data = xmalloc(t->numel * 4);
            memcpy(t->data, buf + 8 + hlen + b, t->numel * 4);
            ok = true;
        }
    }
    json_decref(root);
    return ok;
}

/* The one array of a NumPy .npy (float32, C order). */
static bool npy_tensor(const uint8_t *buf, size_t len, tensor *t, char *why, size_t wl)
{
    memset(t, 0, sizeof *t);
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        snprintf(why, wl, "npy: no magic");
        return false;
    }
    size_t hlen, start;
    if (buf[6] == 1) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        start = 10;
    } else {
        if (len < 12) {
            snprintf(why, wl, "npy: short");
            return false;
        }
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        start = 12;
    }
    if (start + hlen > len || hlen > 4096) {
        snprintf(why, wl, "npy: header of %zu bytes in %zu", hlen, len);
        return false;
    }
    char header[4100];
    memcpy(header, buf + start, hlen);
    header[hlen] = '\0';
    const char *shape = strstr(header, "'shape': (");
    if (!strstr(header, "'descr': '<f4'") || !strstr(header, "'fortran_order': False") || !shape) {
        snprintf(why, wl, "npy: unexpected header %.120s", header);
        return false;
    }
    shape += strlen("'shape': (");
    t->numel = 1;
    while (*shape && *shape != ')' && t->ndim < 4) {
        char *end;
        long v = strtol(shape, &end, 10);
        if (end == shape)
            break;
        t->shape[t->ndim++] = v;
        t->numel *= (size_t)v;
        shape = end;
        while (*shape == ',' || *shape == ' ')
            shape++;
    }
    if (t->ndim == 0 || *shape != ')' || (len - start - hlen) != t->numel * 4) {
        snprintf(why, wl, "npy: shape does not match %zu data bytes", len - start - hlen);
        return false;
    }
    t->data = xmalloc(t->numel * 4);
    memcpy(t->data, buf + start + hlen, t->numel * 4);
    return true;
}

/* {"shape": [...], "dtype": "float32", "data": base64} */
static bool json_tensor(json_t *obj, tensor *t, char *why, size_t wl)
{
    memset(t, 0, sizeof *t);
    const char *data = json_string_value(json_object_get(obj, "data"));
    if (!obj || !data || !parse_shape(json_object_get(obj, "shape"), t)) {
        snprintf(why, wl, "json: tensor without shape or base64 data");
        return false;
    }
    size_t n;
    uint8_t *bytes = b64_decode(data, &n);
    if (!bytes || n != t->numel * 4) {
        snprintf(why, wl, "json: %zu data bytes for %zu elements", bytes ? n : 0, t->numel);
        free(bytes);
        return false;
    }
    t->data = (float *)bytes;
    return true;
}

/* The fixtures' metric: max over elements of |a - b| / (1 + |b|), b the reference. */
static double rel_error(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
        if (!(e <= worst)) /* NaN counts as worst */
            worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

/* ================================================================ images */

typedef struct {
    char name[64];  /* as sent; the fixture's file name, or gen_* */
    char file[4200]; /* on disk, for latent-encode */
    const char *ctype;
    uint8_t *bytes;
    size_t len;
    int w, h;
    int c, lh, lw; /* the reference latents' shape */
    float *ref;
    const char *ref_from; /* fixtures | latent-encode | daemon */
    double weight;        /* share of the request mix */
    int loose_of;         /* a JPEG: index of its PNG, compared loosely; else -1 */
} image;

#define MAX_IMAGES 32
static image IMG[MAX_IMAGES];
static int n_img;

static bool image_size(const uint8_t *b, size_t n, int *w, int *h)
{
    if (n > 24 && !memcmp(b, "\x89PNG", 4)) {
        *w = (int)((uint32_t)b[16] << 24 | (uint32_t)b[17] << 16 | (uint32_t)b[18] << 8 | b[19]);
        *h = (int)((uint32_t)b[20] << 24 | (uint32_t)b[21] << 16 | (uint32_t)b[22] << 8 | b[23]);
        return true;
    }
    if (n > 4 && b[0] == 0xFF && b[1] == 0xD8) { /* walk the JPEG markers to a SOFn */
        size_t i = 2;
        while (i + 9 < n) {
            if (b[i] != 0xFF) {
                i++;
                continue;
            }
            uint8_t m = b[i + 1];
            size_t seg = (size_t)b[i + 2] << 8 | b[i + 3];
            if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
                *h = b[i + 5] << 8 | b[i + 6];
                *w = b[i + 7] << 8 | b[i + 8];
                return true;
            }
            i += 2 + seg;
        }
    }
    return false;
}

static int add_image(const char *name, const char *file, uint8_t *bytes, size_t len, double weight)
{
    if (n_img == MAX_IMAGES)
        die("too many images");
    image *im = &IMG[n_img];
    memset(im, 0, sizeof *im);
    snprintf(im->name, sizeof im->name, "%s", name);
    snprintf(im->file, sizeof im->file, "%s", file);
    im->bytes = bytes;
    im->len = len;
    im->weight = weight;
    im->loose_of = -1;
    im->ctype = len > 2 && bytes[0] == 0xFF ? "image/jpeg" : "image/png";
    if (!image_size(bytes, len, &im->w, &im->h))
        die("%s: cannot read the image size", file);
    return n_img++;
}

static int add_fixture(const char *name, double weight)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/images/%s", O.fixtures, name);
    size_t len;
    uint8_t *bytes = read_file(path, &len);
    if (!bytes)
        die("%s: %s", path, strerror(errno));
    return add_image(name, path, bytes, len, weight);
}

/* A larger picture: fixture `src` tiled rows x cols, every other tile mirrored so that
 * the seams stay smooth, PNG-encoded with libpng. */
static int add_tiled(const char *name, const char *src, int rows, int cols, double weight)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/images/%s", O.fixtures, src);
    png_image in;
    memset(&in, 0, sizeof in);
    in.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&in, path))
        die("%s: %s", path, in.message);
    in.format = PNG_FORMAT_RGB;
    const int w = (int)in.width, h = (int)in.height;
    uint8_t *pix = xmalloc(PNG_IMAGE_SIZE(in));
    if (!png_image_finish_read(&in, NULL, pix, 0, NULL))
        die("%s: %s", path, in.message);
    const int W = w * cols, H = h * rows;
    uint8_t *big = xmalloc((size_t)W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int ty = y / h, tx = x / w, sy = y % h, sx = x % w;
            if (ty & 1)
                sy = h - 1 - sy;
            if (tx & 1)
                sx = w - 1 - sx;
            memcpy(big + ((size_t)y * W + x) * 3, pix + ((size_t)sy * w + sx) * 3, 3);
        }
    png_image out;
    memset(&out, 0, sizeof out);
    out.version = PNG_IMAGE_VERSION;
    out.width = (png_uint_32)W;
    out.height = (png_uint_32)H;
    out.format = PNG_FORMAT_RGB;
    png_alloc_size_t size = 0;
    if (!png_image_write_to_memory(&out, NULL, &size, 0, big, 0, NULL))
        die("png size: %s", out.message);
    uint8_t *png = xmalloc(size);
    if (!png_image_write_to_memory(&out, png, &size, 0, big, 0, NULL))
        die("png write: %s", out.message);
    free(pix);
    free(big);
    snprintf(path, sizeof path, "%s/%s", O.workdir, name);
    if (!write_file(path, png, size))
        die("%s: cannot write", path);
    return add_image(name, path, png, size, weight);
}

static bool adopt_ref(image *im, tensor *t, const char *from, char *why, size_t wl)
{
    if (t->ndim != 4 || t->shape[0] != 1 || t->shape[2] != im->h / 8 || t->shape[3] != im->w / 8) {
        snprintf(why, wl, "%s: latents of shape [%lld,%lld,%lld,%lld] for a %dx%d image",
                 im->name, (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                 (long long)t->shape[3], im->w, im->h);
        free(t->data);
        return false;
    }
    im->c = (int)t->shape[1];
    im->lh = (int)t->shape[2];
    im->lw = (int)t->shape[3];
    im->ref = t->data;
    im->ref_from = from;
    return true;
}

static void ref_stem(const image *im, char *stem, size_t n)
{
    snprintf(stem, n, "%s", im->name);
    char *dot = strrchr(stem, '.');
    if (dot && !strcmp(dot, ".png"))
        *dot = '\0';
}

/* The expected latents from the fixtures, else from latent-encode (same library, no HTTP
 * and no queue; run side by side); without both, the quiet daemon's answer becomes the
 * reference (see reference_phase). */
static void load_references(void)
{
    pid_t pids[MAX_IMAGES] = {0};
    char why[256], path[4400], stem[64], model[4400];
    snprintf(model, sizeof model, "%s/models/%s", O.fixtures, O.model);
    for (int i = 0; i < n_img; i++) {
        image *im = &IMG[i];
        ref_stem(im, stem, sizeof stem);
        snprintf(path, sizeof path, "%s/expected/%s/%s.safetensors", O.fixtures, O.model, stem);
        size_t len;
        uint8_t *buf = strchr(stem, '.') ? NULL : read_file(path, &len);
        tensor t;
        if (buf) {
            bool ok = st_tensor(buf, len, "latents", &t, why, sizeof why) &&
                      adopt_ref(im, &t, "fixtures", why, sizeof why);
            free(buf);
            if (!ok)
                die("%s: %s", path, why);
        } else if (O.encoder_cli) {
            snprintf(path, sizeof path, "%s/ref-%s.safetensors", O.workdir, stem);
            if ((pids[i] = fork()) == 0) {
                execl(O.encoder_cli, O.encoder_cli, "-q", "-m", model, "-o", path, im->file,
                      (char *)NULL);
                _exit(127);
            }
            if (pids[i] < 0)
                die("fork: %s", strerror(errno));
        }
    }
    for (int i = 0; i < n_img; i++) {
        if (pids[i] <= 0)
            continue;
        image *im = &IMG[i];
        int status;
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) || WEXITSTATUS(status))
            die("%s -m %s ... %s failed", O.encoder_cli, model, im->file);
        ref_stem(im, stem, sizeof stem);
        snprintf(path, sizeof path, "%s/ref-%s.safetensors", O.workdir, stem);
        size_t len;
        uint8_t *buf = read_file(path, &len);
        tensor t;
        if (!buf || !st_tensor(buf, len, "latents", &t, why, sizeof why) ||
            !adopt_ref(im, &t, "latent-encode", why, sizeof why))
            die("%s: %s", path, buf ? why : "missing");
        free(buf);
    }
}

/* The realistic mix: mostly small photos, some medium, a fair share of large ones. */
static void load_images(void)
{
    int png64 = add_fixture("astronaut_64.png", 8);
    int jpg = add_fixture("astronaut_64.jpg", 8);
    IMG[jpg].loose_of = png64;
    add_fixture("chelsea_64.png", 6);
    add_fixture("coffee_64.png", 6);
    add_fixture("astronaut_64_palette.png", 2);
    add_fixture("astronaut_64_gray16.png", 2);
    add_fixture("astronaut_64_interlaced.png", 2);
    add_fixture("chelsea_60x44.png", 4);
    add_fixture("coffee_96x128.png", 8);
    add_fixture("rocket_128.png", 8);
    add_fixture("astronaut_256.png", 12);
    add_tiled("gen_astronaut_512.png", "astronaut_256.png", 2, 2, 6);
    add_tiled("gen_rocket_384x512.png", "rocket_128.png", 3, 4, 4);
    load_references();
}

/* ================================================================ request templates */

typedef enum { BODY_JSON, BODY_MULTIPART, BODY_RAW } body_kind;
typedef enum { FMT_NPY, FMT_SAFETENSORS, FMT_JSON } answer_fmt;
typedef enum { T_MIX, T_SLOWREAD, T_SMALL } tclass;
static const char *const body_names[] = {"json", "multipart", "raw"};
static const char *const fmt_names[] = {"npy", "safetensors", "json"};

typedef struct {
    char name[160];
    tclass cls;
    int n;
    int img[4];
    body_kind kind;
    answer_fmt fmt;
    char path[160];
    char ctype[96];
    uint8_t *body;
    size_t len;
    double weight;
    double pixels;
} tmpl;

#define MAX_TMPL 160
static tmpl TPL[MAX_TMPL];
static int n_tpl;

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

#define BOUNDARY "latentd-load-7d3f9a2c"

static void add_template(tclass cls, body_kind kind, answer_fmt fmt, double weight, int n,
                         const int *imgs)
{
    if (n_tpl == MAX_TMPL)
        die("too many templates");
    tmpl *t = &TPL[n_tpl++];
    memset(t, 0, sizeof *t);
    t->cls = cls;
    t->n = n;
    t->kind = kind;
    t->fmt = fmt;
    t->weight = weight;
    memcpy(t->img, imgs, sizeof *imgs * (size_t)n);
    const char *outputs = cls == T_SLOWREAD ? "latents,mean,logvar" : "latents";
    int at = snprintf(t->name, sizeof t->name, "%s->%s", body_names[kind], fmt_names[fmt]);
    for (int i = 0; i < n; i++) {
        at += snprintf(t->name + at, sizeof t->name - (size_t)at, "%s%s", i ? "+" : " ",
                       IMG[imgs[i]].name);
        t->pixels += (double)IMG[imgs[i]].w * IMG[imgs[i]].h;
    }
    buf_t b = {0};
    snprintf(t->path, sizeof t->path, "/v1/encode");
    if (kind == BODY_JSON) {
        snprintf(t->ctype, sizeof t->ctype, "application/json");
        puts_(&b, "{\"images\": [");
        for (int i = 0; i < n; i++) {
            char *s = b64_encode(IMG[imgs[i]].bytes, IMG[imgs[i]].len);
            puts_(&b, i ? ", \"" : "\"");
            puts_(&b, s);
            puts_(&b, "\"");
            free(s);
        }
        char tail[200];
        snprintf(tail, sizeof tail, "], \"outputs\": [\"%s\"], \"format\": \"%s\"}",
                 cls == T_SLOWREAD ? "latents\", \"mean\", \"logvar" : "latents", fmt_names[fmt]);
        puts_(&b, tail);
    } else if (kind == BODY_MULTIPART) {
        snprintf(t->ctype, sizeof t->ctype, "multipart/form-data; boundary=" BOUNDARY);
        for (int i = 0; i < n; i++) {
            char head[300];
            snprintf(head, sizeof head,
                     "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"image\"; "
                     "filename=\"%s\"\r\nContent-Type: %s\r\n\r\n",
                     IMG[imgs[i]].name, IMG[imgs[i]].ctype);
            puts_(&b, head);
            put(&b, IMG[imgs[i]].bytes, IMG[imgs[i]].len);
            puts_(&b, "\r\n");
        }
        char fields[400];
        snprintf(fields, sizeof fields,
                 "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"outputs\"\r\n\r\n%s\r\n"
                 "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\n%s\r\n"
                 "--" BOUNDARY "--\r\n",
                 outputs, fmt_names[fmt]);
        puts_(&b, fields);
    } else {
        snprintf(t->ctype, sizeof t->ctype, "%s", IMG[imgs[0]].ctype);
        snprintf(t->path, sizeof t->path, "/v1/encode?format=%s&outputs=%s", fmt_names[fmt],
                 cls == T_SLOWREAD ? "latents,mean,logvar" : "latents");
        put(&b, IMG[imgs[0]].bytes, IMG[imgs[0]].len);
    }
    t->body = b.p;
    t->len = b.len;
}

static int find_image(const char *name)
{
    for (int i = 0; i < n_img; i++)
        if (!strcmp(IMG[i].name, name))
            return i;
    die("no image %s", name);
}

static void build_templates(void)
{
    for (int i = 0; i < n_img; i++) {
        for (int k = 0; k < 3; k++) /* each body kind, answer formats in turn */
            add_template(T_MIX, (body_kind)k, (answer_fmt)((i + k) % 3), IMG[i].weight / 3, 1, &i);
        add_template(T_SLOWREAD, BODY_JSON, FMT_JSON, IMG[i].weight, 1, &i);
        if (IMG[i].w * IMG[i].h <= 64 * 64)
            add_template(T_SMALL, (body_kind)(i % 3), (answer_fmt)(i % 3), 1, 1, &i);
    }
    /* several images per request: stacked (one size) and per image (mixed sizes) */
    int same[2] = {find_image("chelsea_64.png"), find_image("coffee_64.png")};
    int mixed[2] = {find_image("astronaut_256.png"), find_image("rocket_128.png")};
    int three[3] = {find_image("coffee_96x128.png"), find_image("astronaut_64.jpg"),
                    find_image("astronaut_64.png")};
    add_template(T_MIX, BODY_JSON, FMT_NPY, 4, 2, same);
    add_template(T_MIX, BODY_MULTIPART, FMT_SAFETENSORS, 4, 2, mixed);
    add_template(T_MIX, BODY_JSON, FMT_JSON, 2, 3, three);
}

static const tmpl *pick(rng *r, tclass cls)
{
    double total = 0;
    for (int i = 0; i < n_tpl; i++)
        if (TPL[i].cls == cls)
            total += TPL[i].weight;
    double x = rng_unit(r) * total;
    for (int i = 0; i < n_tpl; i++)
        if (TPL[i].cls == cls && (x -= TPL[i].weight) < 0)
            return &TPL[i];
    for (int i = n_tpl - 1; i >= 0; i--)
        if (TPL[i].cls == cls)
            return &TPL[i];
    die("no template of class %d", cls);
}

/* The well-behaved clients of both phases are dealt requests from one deck in which each
 * template appears in proportion to its weight, in smooth weighted round-robin order, so
 * that any run of requests holds the mix (a 512x512 image costs 60 times a 64x64 one)
 * and both phases start from the same card. */
#define DECK_MAX 2048
static const tmpl *deck[DECK_MAX];
static int deck_len;
static atomic_uint deck_next;

static void build_deck(void)
{
    int w[MAX_TMPL], cur[MAX_TMPL] = {0}, total = 0;
    for (int i = 0; i < n_tpl; i++) {
        w[i] = TPL[i].cls == T_MIX ? (int)lround(TPL[i].weight * 6) : 0;
        total += w[i];
    }
    if (total <= 0 || total > DECK_MAX)
        die("bad template weights (%d)", total);
    for (deck_len = 0; deck_len < total; deck_len++) {
        int best = -1;
        for (int i = 0; i < n_tpl; i++) {
            cur[i] += w[i];
            if (w[i] && (best < 0 || cur[i] > cur[best]))
                best = i;
        }
        cur[best] -= total;
        deck[deck_len] = &TPL[best];
    }
}

static const tmpl *deal(void) { return deck[atomic_fetch_add(&deck_next, 1) % (unsigned)deck_len]; }

static bool same_size(const tmpl *t)
{
    for (int i = 1; i < t->n; i++)
        if (IMG[t->img[i]].w != IMG[t->img[0]].w || IMG[t->img[i]].h != IMG[t->img[0]].h)
            return false;
    return true;
}

static bool compare(const image *im, const float *got, char *why, size_t wl)
{
    const size_t n = (size_t)im->c * im->lh * im->lw;
    double e = rel_error(got, im->ref, n);
    if (e <= O.tol)
        return true;
    snprintf(why, wl, "%s: latents off by %.3g (tolerance %.3g)", im->name, e, O.tol);
    return false;
}

static bool check_shape(const tensor *t, int batch, const image *im, char *why, size_t wl)
{
    if (t->ndim == 4 && t->shape[0] == batch && t->shape[1] == im->c && t->shape[2] == im->lh &&
        t->shape[3] == im->lw)
        return true;
    snprintf(why, wl, "%s: got shape [%lld,%lld,%lld,%lld], want [%d,%d,%d,%d]", im->name,
             (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
             (long long)t->shape[3], batch, im->c, im->lh, im->lw);
    return false;
}

/* Is this 200 answer the right one for the template's images? */
static bool verify(const tmpl *t, const uint8_t *body, size_t len, char *why, size_t wl)
{
    const bool stacked = same_size(t);
    bool ok = true;
    if (t->fmt == FMT_NPY || (t->fmt == FMT_SAFETENSORS && stacked)) {
        tensor x;
        ok = t->fmt == FMT_NPY ? npy_tensor(body, len, &x, why, wl)
                               : st_tensor(body, len, "latents", &x, why, wl);
        ok = ok && check_shape(&x, t->n, &IMG[t->img[0]], why, wl);
        const size_t per = ok ? x.numel / (size_t)t->n : 0;
        for (int i = 0; ok && i < t->n; i++)
            ok = compare(&IMG[t->img[i]], x.data + per * (size_t)i, why, wl);
        free(x.data);
        return ok;
    }
    if (t->fmt == FMT_SAFETENSORS) {
        for (int i = 0; ok && i < t->n; i++) {
            char name[32];
            snprintf(name, sizeof name, "latents.%d", i);
            tensor x;
            ok = st_tensor(body, len, name, &x, why, wl) && check_shape(&x, 1, &IMG[t->img[i]], why, wl) &&
                 compare(&IMG[t->img[i]], x.data, why, wl);
            free(x.data);
        }
        return ok;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)body, len, 0, &je);
    if (!root) {
        snprintf(why, wl, "json answer does not parse: %s", je.text);
        return false;
    }
    json_t *results = json_object_get(root, "results");
    if (!stacked && (!json_is_array(results) || json_array_size(results) != (size_t)t->n)) {
        snprintf(why, wl, "json answer: want %d results", t->n);
        ok = false;
    }
    for (int i = 0; ok && i < (stacked ? 1 : t->n); i++) {
        json_t *holder = stacked ? root : json_array_get(results, (size_t)i);
        tensor x;
        ok = json_tensor(json_object_get(holder, "latents"), &x, why, wl) &&
             check_shape(&x, stacked ? t->n : 1, &IMG[t->img[i]], why, wl);
        const size_t per = ok ? x.numel / (size_t)x.shape[0] : 0;
        for (int j = 0; ok && j < (stacked ? t->n : 1); j++)
            ok = compare(&IMG[t->img[stacked ? j : i]], x.data + per * (size_t)j, why, wl);
        free(x.data);
    }
    json_decref(root);
    return ok;
}

/* ================================================================ accounting */

typedef enum { OUT_OK, OUT_WRONG, OUT_503, OUT_OTHER, OUT_CLOSED, OUT_TIMEOUT, OUT_CONNFAIL,
               OUT_LEFT, N_OUT } outcome;
static const char *const out_names[N_OUT] = {"200 ok", "200 BAD", "503", "other", "closed",
                                             "timeout", "connfail", "left"};

typedef struct {
    double start, end;
    uint64_t images, requests;
    double pixels;
    double daemon_cpu, client_cpu; /* CPU seconds spent in the window */
} window;

static struct {
    pthread_mutex_t lock;
    uint64_t n[N_ROLES][N_OUT];
    uint64_t images_ok[N_ROLES];
    uint32_t other_status[N_ROLES][600];
    int clients[N_ROLES];
    uint64_t status[600];      /* every HTTP answer read, any path: compared with /metrics */
    uint64_t unanswered;       /* requests begun whose answer was never read */
    uint64_t images_200;       /* images in every 200 answer to /v1/encode */
    uint64_t images_slack;     /* images of fully sent requests that got no 200 */
    uint64_t no_retry_after;   /* 503 without Retry-After */
    uint64_t stale_retries;    /* keep-alive connection closed under a new request: resent */
    int wrong_shown;
    window *win;
} S = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void count_status(int status)
{
    pthread_mutex_lock(&S.lock);
    if (status >= 100 && status < 600)
        S.status[status]++;
    pthread_mutex_unlock(&S.lock);
}

/* One request's end. images: in the request; sent_all: the whole request went out. */
static void record(role r, outcome o, int status, int images, double pixels, bool sent_all,
                   bool answered)
{
    const double t = now();
    pthread_mutex_lock(&S.lock);
    S.n[r][o]++;
    if (o == OUT_OK)
        S.images_ok[r] += (uint64_t)images;
    if (o == OUT_OTHER && status >= 100 && status < 600)
        S.other_status[r][status]++;
    if (!answered)
        S.unanswered++;
    if (status == 200)
        S.images_200 += (uint64_t)images;
    else if (sent_all)
        S.images_slack += (uint64_t)images;
    if (o == OUT_OK && S.win && t >= S.win->start && t <= S.win->end) {
        S.win->images += (uint64_t)images;
        S.win->requests++;
        S.win->pixels += pixels;
    }
    pthread_mutex_unlock(&S.lock);
}

/* ================================================================ sockets and HTTP */

static struct sockaddr_in TARGET; /* 127.0.0.1:port */
static int PORT;

/* poll one fd until `deadline`: revents, 0 on timeout */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - now();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)ceil(left * 1000));
        if (rc > 0)
            return p.revents;
        if (rc < 0 && errno != EINTR)
            return POLLERR;
    }
}

/* A non-blocking TCP connection to the daemon from source `src` (NULL: 127.0.0.1). */
static int tcp_connect(const struct sockaddr_in *src, int rcvbuf, double deadline)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (src) {
#ifdef IP_BIND_ADDRESS_NO_PORT
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
        if (bind(fd, (const struct sockaddr *)src, sizeof *src) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
    }
    if (connect(fd, (const struct sockaddr *)&TARGET, sizeof TARGET) != 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        int ev = wait_fd(fd, POLLOUT, deadline);
        int err = 0;
        socklen_t el = sizeof err;
        if (!ev || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err) {
            close(fd);
            errno = ev ? (err ? err : EIO) : ETIMEDOUT;
            return -1;
        }
    }
    return fd;
}

static void close_fd(int *fd, bool reset)
{
    if (*fd < 0)
        return;
    if (reset) { /* RST instead of FIN: an abrupt client */
        struct linger l = {1, 0};
        setsockopt(*fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(*fd);
    *fd = -1;
}

typedef enum { SEND_DONE, SEND_EARLY, SEND_CLOSED, SEND_TIMEOUT } send_rc;

/* Sends head then body, `limit` bytes of the two in all, `chunk` bytes per `gap_ms`
 * (chunk 0: as fast as the socket takes them). Stops early (SEND_EARLY) when the
 * daemon says something or closes: a refusal may come before the body is in. */
static send_rc send_paced(int fd, const char *head, size_t hlen, const uint8_t *body, size_t limit,
                          size_t chunk, int gap_ms, double deadline, size_t *sent)
{
    *sent = 0;
    while (*sent < limit) {
        int ev = wait_fd(fd, POLLOUT | POLLIN, deadline);
        if (!ev)
            return SEND_TIMEOUT;
        if (ev & (POLLIN | POLLHUP | POLLERR))
            return SEND_EARLY;
        const uint8_t *from = *sent < hlen ? (const uint8_t *)head + *sent : body + (*sent - hlen);
        size_t n = (*sent < hlen ? hlen : limit) - *sent;
        if (n > limit - *sent)
            n = limit - *sent;
        if (chunk && n > chunk)
            n = chunk;
        ssize_t w = send(fd, from, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                continue;
            return SEND_CLOSED;
        }
        *sent += (size_t)w;
        if (chunk && *sent < limit) { /* the slow client's pause, awake for an answer */
            double until = now() + gap_ms / 1000.0;
            if (until > deadline)
                until = deadline;
            ev = wait_fd(fd, POLLIN, until);
            if (ev)
                return SEND_EARLY;
            if (now() >= deadline)
                return SEND_TIMEOUT;
        }
    }
    return SEND_DONE;
}

typedef struct {
    int status, retry_after; /* -1: no Retry-After */
    bool keep_alive;
    uint8_t *raw;  /* everything read */
    uint8_t *body; /* the body: inside raw, or its own (de-chunked) buffer */
    bool body_owned;
    size_t body_len, got;
} http_resp;

static void resp_free(http_resp *r)
{
    if (r->body_owned)
        free(r->body);
    free(r->raw);
    memset(r, 0, sizeof *r);
}

typedef enum { RD_OK, RD_CLOSED, RD_TIMEOUT, RD_BAD } rd_rc;

typedef struct {
    int fd;
    uint8_t *buf;
    size_t len, cap;
    double deadline;
    size_t slow;
    int slow_ms;
} reader;

/* more bytes: 1, 0 at EOF, -1 on error, -2 at the deadline */
static int rd_fill(reader *rd)
{
    if (rd->cap - rd->len < 4096) {
        rd->cap = rd->cap ? rd->cap * 2 : 16384;
        rd->buf = xrealloc(rd->buf, rd->cap + 1);
    }
    size_t want = rd->cap - rd->len;
    if (rd->slow) { /* the slow reader: a little, then a pause */
        if (want > rd->slow)
            want = rd->slow;
        if (rd->len) {
            double pause = rd->slow_ms / 1000.0;
            if (now() + pause > rd->deadline)
                return -2;
            sleep_s(pause);
        }
    }
    for (;;) {
        int ev = wait_fd(rd->fd, POLLIN, rd->deadline);
        if (!ev)
            return -2;
        ssize_t n = recv(rd->fd, rd->buf + rd->len, want, 0);
        if (n > 0) {
            rd->len += (size_t)n;
            rd->buf[rd->len] = '\0';
            return 1;
        }
        if (n == 0)
            return 0;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
    }
}

static rd_rc rd_need(reader *rd, size_t n)
{
    while (rd->len < n) {
        int rc = rd_fill(rd);
        if (rc <= 0)
            return rc == -2 ? RD_TIMEOUT : RD_CLOSED;
    }
    return RD_OK;
}

static const char *find_crlf(const reader *rd, size_t from)
{
    for (size_t i = from; i + 1 < rd->len; i++)
        if (rd->buf[i] == '\r' && rd->buf[i + 1] == '\n')
            return (const char *)rd->buf + i;
    return NULL;
}

/* One HTTP/1.x answer. slow: bytes per read, slow_ms: pause between reads (0: fast). */
static rd_rc read_response(int fd, double deadline, size_t slow, int slow_ms, http_resp *r)
{
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    reader rd = {fd, NULL, 0, 0, deadline, slow, slow_ms};
    size_t hend = 0;
    rd_rc rc = RD_OK;
    for (;;) { /* the head; skip 1xx */
        const uint8_t *e = NULL;
        while (!(e = rd.len >= 4 ? memmem(rd.buf, rd.len, "\r\n\r\n", 4) : NULL)) {
            if (rd.len > 65536) {
                rc = RD_BAD;
                goto out;
            }
            int f = rd_fill(&rd);
            if (f <= 0) {
                rc = f == -2 ? RD_TIMEOUT : RD_CLOSED;
                goto out;
            }
        }
        hend = (size_t)(e - rd.buf) + 4;
        int minor = 0;
        if (sscanf((const char *)rd.buf, "HTTP/1.%d %d", &minor, &r->status) != 2) {
            rc = RD_BAD;
            goto out;
        }
        if (r->status >= 200)
            break;
        memmove(rd.buf, rd.buf + hend, rd.len - hend);
        rd.len -= hend;
    }
    bool chunked = false, has_length = false;
    size_t length = 0;
    int minor = 1;
    sscanf((const char *)rd.buf, "HTTP/1.%d", &minor);
    r->keep_alive = minor >= 1;
    for (const char *line = strstr((const char *)rd.buf, "\r\n") + 2;
         line < (const char *)rd.buf + hend - 2;) {
        const char *eol = strstr(line, "\r\n");
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nl = (size_t)(colon - line);
            char value[256];
            const char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(value, sizeof value, "%.*s", (int)(eol - v), v);
            if (nl == 14 && !strncasecmp(line, "Content-Length", nl)) {
                has_length = true;
                length = strtoull(value, NULL, 10);
            } else if (nl == 17 && !strncasecmp(line, "Transfer-Encoding", nl)) {
                chunked = strcasestr(value, "chunked") != NULL;
            } else if (nl == 10 && !strncasecmp(line, "Connection", nl)) {
                if (strcasestr(value, "close"))
                    r->keep_alive = false;
                else if (strcasestr(value, "keep-alive"))
                    r->keep_alive = true;
            } else if (nl == 11 && !strncasecmp(line, "Retry-After", nl)) {
                r->retry_after = atoi(value);
            }
        }
        line = eol + 2;
    }
    if (r->status == 204 || r->status == 304) {
        r->body = rd.buf + hend;
    } else if (chunked) {
        buf_t out = {0};
        size_t pos = hend;
        for (;;) {
            const char *eol;
            while (!(eol = find_crlf(&rd, pos))) {
                int f = rd_fill(&rd);
                if (f <= 0) {
                    free(out.p);
                    rc = f == -2 ? RD_TIMEOUT : RD_CLOSED;
                    goto out;
                }
            }
            size_t size = strtoull((const char *)rd.buf + pos, NULL, 16);
            pos = (size_t)(eol - (const char *)rd.buf) + 2;
            if (size == 0) {
                /* trailers: up to an empty line */
                while ((rc = rd_need(&rd, pos + 2)) == RD_OK && !(rd.buf[pos] == '\r' && rd.buf[pos + 1] == '\n')) {
                    const char *t = find_crlf(&rd, pos);
                    if (t)
                        pos = (size_t)(t - (const char *)rd.buf) + 2;
                    else if ((rc = rd_fill(&rd) > 0 ? RD_OK : RD_CLOSED) != RD_OK)
                        break;
                }
                break;
            }
            if ((rc = rd_need(&rd, pos + size + 2)) != RD_OK) {
                free(out.p);
                goto out;
            }
            put(&out, rd.buf + pos, size);
            pos += size + 2;
        }
        if (rc != RD_OK) {
            free(out.p);
            goto out;
        }
        r->body = out.p ? out.p : xmalloc(1);
        r->body_owned = true;
        r->body_len = out.len;
    } else if (has_length) {
        if ((rc = rd_need(&rd, hend + length)) != RD_OK)
            goto out;
        r->body = rd.buf + hend;
        r->body_len = length;
    } else { /* until the daemon closes */
        int f;
        while ((f = rd_fill(&rd)) > 0) {
        }
        if (f == -2) {
            rc = RD_TIMEOUT;
            goto out;
        }
        r->keep_alive = false;
        r->body = rd.buf + hend;
        r->body_len = rd.len - hend;
    }
out:
    r->raw = rd.buf;
    r->got = rd.len;
    if (rc != RD_OK) {
        r->body = NULL;
        r->body_len = 0;
        r->status = 0;
    }
    return rc;
}

/* GET path from 127.0.0.1 on a fresh connection; counts the answer. */
static rd_rc http_get(const char *path, double timeout, http_resp *r, double *latency)
{
    double t0 = now(), deadline = t0 + timeout;
    memset(r, 0, sizeof *r);
    int fd = tcp_connect(NULL, 0, deadline);
    if (fd < 0) {
        if (latency)
            *latency = now() - t0;
        return errno == ETIMEDOUT ? RD_TIMEOUT : RD_CLOSED;
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: latentd-load\r\n"
                      "Connection: close\r\n\r\n", path, PORT);
    size_t sent;
    send_rc s = send_paced(fd, head, (size_t)hl, NULL, (size_t)hl, 0, 0, deadline, &sent);
    rd_rc rc = s == SEND_TIMEOUT ? RD_TIMEOUT : read_response(fd, deadline, 0, 0, r);
    close(fd);
    if (latency)
        *latency = now() - t0;
    if (rc == RD_OK)
        count_status(r->status);
    return rc;
}

/* ================================================================ the daemon */

static struct {
    pid_t pid;
    int pidfd, fifo;
    bool spawned;
    char fifo_path[4200], log_path[4200];
    FILE *log;
    pthread_t tee;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int port;
    bool exited;
    atomic_bool stopping; /* we sent the SIGTERM */
    bool killed;          /* and then, past stop_timeout, a SIGKILL */
    double exited_at;
    int wstatus;
    char line[2048];
    size_t line_len;
} D = {.pid = -1, .pidfd = -1, .fifo = -1, .lock = PTHREAD_MUTEX_INITIALIZER,
       .cond = PTHREAD_COND_INITIALIZER};

static void scan_log_line(const char *line)
{
    const char *at = strstr(line, "listening on ");
    if (!at || D.port)
        return;
    at += strlen("listening on ");
    const char *end = at + strcspn(at, " \n");
    const char *colon = NULL;
    for (const char *p = at; p < end; p++)
        if (*p == ':')
            colon = p;
    if (!colon)
        return;
    pthread_mutex_lock(&D.lock);
    D.port = atoi(colon + 1);
    pthread_cond_broadcast(&D.cond);
    pthread_mutex_unlock(&D.lock);
}

static void tee_bytes(const char *data, size_t n)
{
    fwrite(data, 1, n, D.log);
    fflush(D.log);
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n' || D.line_len == sizeof D.line - 1) {
            D.line[D.line_len] = '\0';
            scan_log_line(D.line);
            D.line_len = 0;
        } else {
            D.line[D.line_len++] = data[i];
        }
    }
}

static int reopen_fifo(void)
{
    if (D.fifo >= 0)
        close(D.fifo);
    D.fifo = open(D.fifo_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    return D.fifo;
}

/* The daemon writes its log into a FIFO; this thread copies it to the log file, reads the
 * port off the "listening on" line and reaps the daemon. It blocks in poll() on the FIFO
 * and on a pidfd, so neither the start nor the exit is found by sleeping and looking. */
static void *tee_main(void *arg)
{
    (void)arg;
    char chunk[8192];
    for (;;) {
        struct pollfd p[2] = {{D.fifo, POLLIN, 0}, {D.pidfd, POLLIN, 0}};
        int rc = poll(p, D.pidfd >= 0 ? 2 : 1, D.pidfd >= 0 ? -1 : 200);
        if (rc < 0 && errno != EINTR)
            break;
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(D.fifo, chunk, sizeof chunk);
            if (n > 0)
                tee_bytes(chunk, (size_t)n);
            else if (n == 0)
                reopen_fifo(); /* the writer closed (exit, or a log reopen): wait for the next */
        }
        int status;
        bool gone = D.pidfd >= 0 ? (p[1].revents & POLLIN) != 0
                                 : waitpid(D.pid, &status, WNOHANG) == D.pid;
        if (gone) {
            if (D.pidfd >= 0)
                waitpid(D.pid, &status, 0);
            ssize_t n;
            while ((n = read(D.fifo, chunk, sizeof chunk)) > 0)
                tee_bytes(chunk, (size_t)n);
            if (!atomic_load(&D.stopping)) {
                if (WIFSIGNALED(status))
                    note("LATENTD DIED: killed by signal %d (%s)%s", WTERMSIG(status),
                         strsignal(WTERMSIG(status)), WTERMSIG(status) == SIGTERM
                         ? " -- not ours: something else on this machine sent it" : "");
                else
                    note("LATENTD EXITED by itself with status %d (see %s)", WEXITSTATUS(status),
                         D.log_path);
            }
            pthread_mutex_lock(&D.lock);
            D.exited = true;
            D.exited_at = now();
            D.wstatus = status;
            pthread_cond_broadcast(&D.cond);
            pthread_mutex_unlock(&D.lock);
            return NULL;
        }
    }
    return NULL;
}

static bool daemon_gone(void)
{
    pthread_mutex_lock(&D.lock);
    bool gone = D.exited;
    pthread_mutex_unlock(&D.lock);
    return gone;
}

static bool wait_daemon(double deadline, bool for_port)
{
    struct timespec ts;
    pthread_mutex_lock(&D.lock);
    while (!D.exited && !(for_port && D.port)) {
        clock_gettime(CLOCK_REALTIME, &ts);
        double left = deadline - now();
        if (left <= 0)
            break;
        ts.tv_sec += (time_t)left;
        ts.tv_nsec += (long)((left - floor(left)) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&D.cond, &D.lock, &ts);
    }
    bool done = for_port ? D.port > 0 : D.exited;
    pthread_mutex_unlock(&D.lock);
    return done;
}

static void start_daemon(void)
{
    snprintf(D.fifo_path, sizeof D.fifo_path, "%s/latentd.fifo", O.workdir);
    snprintf(D.log_path, sizeof D.log_path, "%s/latentd.log", O.workdir);
    if (mkfifo(D.fifo_path, 0600) != 0)
        die("mkfifo %s: %s", D.fifo_path, strerror(errno));
    if (reopen_fifo() < 0) /* a reader first, so that the daemon's open does not block */
        die("%s: %s", D.fifo_path, strerror(errno));
    if (!(D.log = fopen(D.log_path, "w")))
        die("%s: %s", D.log_path, strerror(errno));
    char model[4300];
    snprintf(model, sizeof model, "%s/models/%s", O.fixtures, O.model);
    const char *argv[160] = {O.bin, "--model", model, "--listen", "127.0.0.1:0",
                             "--log-file", D.fifo_path};
    int argc = 7;
    for (int i = 0; i < O.n_daemon_args; i++)
        argv[argc++] = O.daemon_args[i];
    argv[argc] = NULL;
    {
        char cmd[2048];
        int at = 0;
        for (int i = 0; i < argc && at < (int)sizeof cmd - 1; i++)
            at += snprintf(cmd + at, sizeof cmd - (size_t)at, "%s%s", i ? " " : "", argv[i]);
        note("starting %s", cmd);
    }
    D.pid = fork();
    if (D.pid < 0)
        die("fork: %s", strerror(errno));
    if (D.pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        execv(O.bin, (char *const *)argv);
        fprintf(stderr, "latentd-load: cannot run %s: %s\n", O.bin, strerror(errno));
        _exit(127);
    }
    D.spawned = true;
    D.pidfd = (int)syscall(SYS_pidfd_open, D.pid, 0);
    pthread_create(&D.tee, NULL, tee_main, NULL);
    if (!wait_daemon(now() + O.start_timeout, true)) {
        if (!D.exited)
            kill(D.pid, SIGKILL);
        die("latentd did not report its port within %.0f s (log: %s)", O.start_timeout, D.log_path);
    }
    PORT = D.port;
}

/* SIGTERM, bounded wait (then SIGKILL); the exit status, or -1. *died_before: it had
 * exited before we asked. */
static int stop_daemon(double *took, bool *died_before)
{
    double t0 = now();
    atomic_store(&D.stopping, true);
    *died_before = daemon_gone();
    if (!*died_before)
        kill(D.pid, SIGTERM);
    bool exited = wait_daemon(now() + O.stop_timeout, false);
    if (!exited) {
        D.killed = true;
        kill(D.pid, SIGKILL);
        wait_daemon(now() + 10, false);
    }
    *took = now() - t0;
    pthread_join(D.tee, NULL);
    fclose(D.log);
    if (D.pidfd >= 0)
        close(D.pidfd);
    close(D.fifo);
    unlink(D.fifo_path);
    return exited && WIFEXITED(D.wstatus) ? WEXITSTATUS(D.wstatus) : -1;
}

/* ================================================================ /proc */

static pid_t PID;

typedef struct {
    long rss_kb, hwm_kb;
    int threads, fds;
} proc_sample;

static bool proc_read(proc_sample *s)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)PID);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    s->rss_kb = s->hwm_kb = 0;
    s->threads = s->fds = 0;
    while (fgets(line, sizeof line, fp)) {
        if (!strncmp(line, "VmRSS:", 6))
            s->rss_kb = atol(line + 6);
        else if (!strncmp(line, "VmHWM:", 6))
            s->hwm_kb = atol(line + 6);
        else if (!strncmp(line, "Threads:", 8))
            s->threads = atoi(line + 8);
    }
    fclose(fp);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)PID);
    DIR *d = opendir(path);
    if (!d)
        return false;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            s->fds++;
    closedir(d);
    return true;
}

/* CPU seconds (user + system) the daemon has used */
static double daemon_cpu(void)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)PID);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return 0;
    char *ok = fgets(line, sizeof line, fp);
    fclose(fp);
    char *p = ok ? strrchr(line, ')') : NULL;
    if (!p)
        return 0;
    unsigned long long ut = 0, st = 0;
    int field = 2; /* the ')' ends field 2; utime and stime are fields 14 and 15 */
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        else if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double client_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static double load1(void)
{
    double l = -1;
    FILE *fp = fopen("/proc/loadavg", "r");
    if (fp) {
        if (fscanf(fp, "%lf", &l) != 1)
            l = -1;
        fclose(fp);
    }
    return l;
}

static void window_open(window *w, double seconds)
{
    memset(w, 0, sizeof *w);
    w->daemon_cpu = -daemon_cpu();
    w->client_cpu = -client_cpu();
    w->start = now();
    w->end = w->start + seconds;
    pthread_mutex_lock(&S.lock);
    S.win = w;
    pthread_mutex_unlock(&S.lock);
}

/* at the window's end (the phase's time is up): the CPU it took */
static void window_cpu(window *w)
{
    w->daemon_cpu += daemon_cpu();
    w->client_cpu += client_cpu();
}

static void window_close(void)
{
    pthread_mutex_lock(&S.lock);
    S.win = NULL;
    pthread_mutex_unlock(&S.lock);
}

static struct {
    pthread_t th;
    atomic_bool stop;
    pthread_mutex_t lock;
    long peak_kb; /* the highest VmRSS sampled since the last reset */
    int peak_threads, peak_fds;
    long samples;
} RSS = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *rss_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&RSS.stop)) {
        proc_sample s;
        if (proc_read(&s)) {
            pthread_mutex_lock(&RSS.lock);
            if (s.rss_kb > RSS.peak_kb)
                RSS.peak_kb = s.rss_kb;
            if (s.threads > RSS.peak_threads)
                RSS.peak_threads = s.threads;
            if (s.fds > RSS.peak_fds)
                RSS.peak_fds = s.fds;
            RSS.samples++;
            pthread_mutex_unlock(&RSS.lock);
        }
        sleep_s(0.1);
    }
    return NULL;
}

static void rss_reset(void)
{
    pthread_mutex_lock(&RSS.lock);
    RSS.peak_kb = 0; /* per phase; the thread and fd peaks are for the whole run */
    pthread_mutex_unlock(&RSS.lock);
}

/* ================================================================ /metrics */

typedef struct {
    bool ok;
    uint64_t status[600];
    uint64_t images;
    long in_flight, queue_depth;
} metrics;

/* latentd_images_encoded_total{model="..."} N: one series per model. */
static bool images_series(const char *line, unsigned long long *v)
{
    static const char name[] = "latentd_images_encoded_total";
    if (strncmp(line, name, sizeof name - 1) != 0)
        return false;
    const char *rest = line + sizeof name - 1;
    if (*rest == '{') {
        rest = strstr(rest, "} ");
        if (!rest)
            return false;
        rest++;
    }
    return sscanf(rest, " %llu", v) == 1;
}

static bool scrape(metrics *m)
{
    memset(m, 0, sizeof *m);
    http_resp r;
    if (http_get("/metrics", 5, &r, NULL) != RD_OK || r.status != 200) {
        resp_free(&r);
        return false;
    }
    char *text = xmalloc(r.body_len + 1);
    memcpy(text, r.body, r.body_len);
    text[r.body_len] = '\0';
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int s;
        unsigned long long v;
        if (sscanf(line, "latentd_requests_total{status=\"%d\"} %llu", &s, &v) == 2 && s >= 100 && s < 600)
            m->status[s] = v;
        else if (images_series(line, &v))
            m->images += v; /* summed over the models */
        else if (sscanf(line, "latentd_requests_in_flight %llu", &v) == 1)
            m->in_flight = (long)v;
        else if (sscanf(line, "latentd_queue_depth %llu", &v) == 1)
            m->queue_depth = (long)v;
    }
    free(text);
    resp_free(&r);
    m->ok = true;
    return true;
}

/* Until nothing is queued or in flight (bounded); false if it never got there. */
static bool wait_idle(double timeout, metrics *m)
{
    double deadline = now() + timeout;
    for (;;) {
        if (scrape(m) && m->in_flight == 0 && m->queue_depth == 0)
            return true;
        if (now() > deadline)
            return false;
        sleep_s(0.2);
    }
}

/* Threads and fds once they stop moving (three equal samples 100 ms apart, at most `timeout`);
 * or, with want, until they equal want. */
static bool settle(double timeout, const proc_sample *want, proc_sample *got)
{
    double deadline = now() + timeout;
    proc_sample prev = {0};
    int same = 0;
    for (;;) {
        if (!proc_read(got))
            return false;
        if (want ? got->threads == want->threads && got->fds == want->fds
                 : (got->threads == prev.threads && got->fds == prev.fds && ++same >= 3))
            return true;
        if (!want && !(got->threads == prev.threads && got->fds == prev.fds))
            same = 0;
        prev = *got;
        if (now() > deadline)
            return false;
        sleep_s(0.1);
    }
}

/* ================================================================ probes */

typedef struct {
    int n, ok;
    double worst, sum;
    double *lat;
    int cap;
    char first_fail[160];
} probe_stats;

static void probe_add(probe_stats *p, bool ok, double latency, const char *why)
{
    if (p->n == p->cap)
        p->lat = xrealloc(p->lat, sizeof *p->lat * (size_t)(p->cap = p->cap ? p->cap * 2 : 256));
    p->lat[p->n++] = latency;
    p->sum += latency;
    if (latency > p->worst)
        p->worst = latency;
    if (ok)
        p->ok++;
    else if (!p->first_fail[0])
        snprintf(p->first_fail, sizeof p->first_fail, "%s", why);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, int n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static struct {
    pthread_t th;
    atomic_bool stop;
    probe_stats st;
} HEALTH;

static void *health_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&HEALTH.stop)) {
        double t0 = now(), lat;
        http_resp r;
        rd_rc rc = http_get("/healthz", O.healthz_deadline, &r, &lat);
        char why[160];
        bool ok = rc == RD_OK && r.status == 200 && lat <= O.healthz_deadline;
        snprintf(why, sizeof why, "at %.1f s: %s after %.0f ms", now() - T0,
                 rc == RD_OK ? (r.status == 200 ? "200 too late" : "not 200")
                 : rc == RD_TIMEOUT ? "no answer" : "connection closed or refused", lat * 1e3);
        if (rc == RD_OK && r.status != 200)
            snprintf(why, sizeof why, "at %.1f s: status %d", now() - T0, r.status);
        probe_add(&HEALTH.st, ok, rc == RD_OK ? lat : fmax(lat, O.healthz_deadline), why);
        resp_free(&r);
        double next = t0 + O.probe_ms / 1000.0;
        while (!atomic_load(&HEALTH.stop) && now() < next)
            sleep_s(fmin(0.05, next - now()));
    }
    return NULL;
}

static void health_start(void)
{
    free(HEALTH.st.lat);
    memset(&HEALTH.st, 0, sizeof HEALTH.st);
    atomic_store(&HEALTH.stop, false);
    pthread_create(&HEALTH.th, NULL, health_main, NULL);
}

static void health_stop(void)
{
    atomic_store(&HEALTH.stop, true);
    pthread_join(HEALTH.th, NULL);
}

/* ================================================================ clients */

typedef struct {
    int id;
    role role;
    rng r;
    struct sockaddr_in src;
    bool bind_src;
    double end, hard_end; /* no new request after end; nothing waited for after hard_end */
    int requests_max;     /* 0: no limit */
    pthread_t th;
    /* slowloris: how long the daemon kept each connection */
    double *held;
    bool *closed_by_daemon;
    int *held_status;
    int n_held, cap_held;
    probe_stats enc; /* encode probe */
} client;

typedef struct {
    const tmpl *t;
    bool close_conn;
    size_t abort_after; /* body bytes, then close (SIZE_MAX: send it all) */
    int abandon_ms;     /* >= 0: after sending, leave after this long without reading */
    size_t body_chunk;
    int body_ms;
    size_t read_chunk;
    int read_ms;
    int rcvbuf;
    double deadline;
} plan;

static void show_wrong(const client *c, const tmpl *t, const char *why)
{
    pthread_mutex_lock(&S.lock);
    bool show = S.wrong_shown++ < 10;
    pthread_mutex_unlock(&S.lock);
    if (show)
        note("WRONG ANSWER (%s, client %d, %s): %s", role_names[c->role], c->id, t->name, why);
}

/* One request on *fd (opened when < 0); *fd is left open only for reuse. *retry: a
 * kept-alive connection was closed under the request before any answer; send it again. */
static outcome run_request(client *c, int *fd, bool *reused, const plan *p, bool *retry,
                           int *status_out, double *latency)
{
    const tmpl *t = p->t;
    *retry = false;
    *status_out = 0;
    double t0 = now();
    if (*fd < 0) {
        *reused = false;
        *fd = tcp_connect(c->bind_src ? &c->src : NULL, p->rcvbuf, fmin(p->deadline, now() + 10));
        if (*fd < 0) {
            record(c->role, OUT_CONNFAIL, 0, t->n, t->pixels, false, true);
            return OUT_CONNFAIL;
        }
    }
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: latentd-load\r\n"
                      "Content-Type: %s\r\nContent-Length: %zu\r\n%s\r\n",
                      t->path, PORT, t->ctype, t->len, p->close_conn ? "Connection: close\r\n" : "");
    const size_t total = (size_t)hl + t->len;
    const size_t limit = p->abort_after < t->len ? (size_t)hl + p->abort_after : total;
    size_t sent;
    send_rc s = send_paced(*fd, head, (size_t)hl, t->body, limit, p->body_chunk, p->body_ms,
                           p->deadline, &sent);
    const bool sent_all = s == SEND_DONE && limit == total;
    if (s == SEND_DONE && limit < total) { /* the upload cut short, on purpose */
        close_fd(fd, rng_next(&c->r) & 1);
        record(c->role, OUT_LEFT, 0, t->n, t->pixels, false, false);
        return OUT_LEFT;
    }
    if (sent_all && p->abandon_ms >= 0) { /* gone while queued */
        wait_fd(*fd, 0, fmin(p->deadline, now() + p->abandon_ms / 1000.0));
        close_fd(fd, false);
        record(c->role, OUT_LEFT, 0, t->n, t->pixels, true, false);
        return OUT_LEFT;
    }
    if (s == SEND_TIMEOUT) {
        close_fd(fd, false);
        record(c->role, OUT_TIMEOUT, 0, t->n, t->pixels, false, false);
        return OUT_TIMEOUT;
    }
    /* SEND_DONE, or the daemon spoke or closed early: read what it says */
    http_resp r;
    rd_rc rr = read_response(*fd, s == SEND_DONE ? p->deadline : fmin(p->deadline, now() + 2),
                             p->read_chunk, p->read_ms, &r);
    *latency = now() - t0;
    if (rr != RD_OK) {
        const bool stale = *reused && r.got == 0 && rr == RD_CLOSED;
        close_fd(fd, false);
        resp_free(&r);
        if (stale) {
            pthread_mutex_lock(&S.lock);
            S.stale_retries++;
            S.unanswered++;
            pthread_mutex_unlock(&S.lock);
            *retry = true;
            return OUT_CLOSED;
        }
        outcome o = rr == RD_TIMEOUT ? OUT_TIMEOUT : OUT_CLOSED;
        record(c->role, o, 0, t->n, t->pixels, sent_all, false);
        return o;
    }
    count_status(r.status);
    *status_out = r.status;
    outcome o;
    if (r.status == 200) {
        char why[300];
        o = verify(t, r.body, r.body_len, why, sizeof why) ? OUT_OK : OUT_WRONG;
        if (o == OUT_WRONG)
            show_wrong(c, t, why);
    } else if (r.status == 503) {
        o = OUT_503;
        if (r.retry_after < 0) {
            pthread_mutex_lock(&S.lock);
            S.no_retry_after++;
            pthread_mutex_unlock(&S.lock);
        }
    } else {
        o = OUT_OTHER;
        if (O.verbose)
            note("%s client %d: status %d for %s: %.200s", role_names[c->role], c->id, r.status,
                 t->name, r.body ? (const char *)r.body : "");
    }
    record(c->role, o, r.status, t->n, t->pixels, sent_all, true);
    const bool keep = sent_all && r.keep_alive && !p->close_conn;
    resp_free(&r);
    if (keep)
        *reused = true;
    else
        close_fd(fd, false);
    return o;
}

static void backoff(client *c, double scale_ms)
{
    double ms = scale_ms * (0.5 + rng_unit(&c->r));
    double until = fmin(now() + ms / 1000.0, c->end);
    sleep_s(until - now());
}

/* Well-behaved clients: keep-alive or one connection per request, retrying after 503. */
static void normal_client(client *c, bool keep_alive)
{
    int fd = -1;
    bool reused = false;
    int done = 0;
    const tmpl *want = NULL; /* a request refused with 503 (or lost) is sent again */
    while (now() < c->end && (!c->requests_max || done < c->requests_max)) {
        if (!want)
            want = deal();
        plan p = {.t = want, .close_conn = !keep_alive, .abort_after = SIZE_MAX,
                  .abandon_ms = -1, .deadline = fmin(now() + O.patience, c->hard_end)};
        bool retry;
        int status;
        double lat;
        outcome o = run_request(c, &fd, &reused, &p, &retry, &status, &lat);
        if (retry)
            o = run_request(c, &fd, &reused, &p, &retry, &status, &lat);
        done++;
        if (o == OUT_OK || o == OUT_WRONG || o == OUT_OTHER)
            want = NULL;
        else
            backoff(c, O.backoff_ms);
    }
    close_fd(&fd, false);
}

static void note_held(client *c, double held, bool by_daemon, int status)
{
    if (c->n_held == c->cap_held) {
        c->cap_held = c->cap_held ? c->cap_held * 2 : 8;
        c->held = xrealloc(c->held, sizeof *c->held * (size_t)c->cap_held);
        c->closed_by_daemon = xrealloc(c->closed_by_daemon, sizeof *c->closed_by_daemon * (size_t)c->cap_held);
        c->held_status = xrealloc(c->held_status, sizeof *c->held_status * (size_t)c->cap_held);
    }
    c->held[c->n_held] = held;
    c->closed_by_daemon[c->n_held] = by_daemon;
    c->held_status[c->n_held++] = status;
}

/* A header that never ends, a byte every slow_interval, until `until` or the daemon hangs up. */
static void slowloris_once(client *c, double until)
{
    static const char head[] =
        "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: latentd-load slowloris\r\n"
        "Content-Type: image/png\r\nContent-Length: 9577\r\nX-Slow-Loris: "
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    double t0 = now();
    int fd = tcp_connect(c->bind_src ? &c->src : NULL, 0, fmin(until, now() + 10));
    if (fd < 0) {
        record(c->role, OUT_CONNFAIL, 0, 0, 0, false, true);
        note_held(c, 0, true, -1);
        return;
    }
    size_t sent;
    send_rc s = send_paced(fd, head, sizeof head - 1, NULL, sizeof head - 1, 1,
                           (int)(O.slow_interval * 1000), until, &sent);
    double held = now() - t0;
    if (s == SEND_TIMEOUT || s == SEND_DONE) { /* still held when we stopped */
        close_fd(&fd, false);
        record(c->role, OUT_LEFT, 0, 0, 0, false, false);
        note_held(c, held, false, 0);
        return;
    }
    http_resp r; /* the daemon hung up, perhaps with a word (408, 503...) */
    rd_rc rr = read_response(fd, now() + 1, 0, 0, &r);
    close_fd(&fd, false);
    if (rr == RD_OK) {
        count_status(r.status);
        record(c->role, r.status == 503 ? OUT_503 : OUT_OTHER, r.status, 0, 0, false, true);
        if (r.status == 503 && r.retry_after < 0) {
            pthread_mutex_lock(&S.lock);
            S.no_retry_after++;
            pthread_mutex_unlock(&S.lock);
        }
    } else {
        record(c->role, OUT_CLOSED, 0, 0, 0, false, false);
    }
    note_held(c, held, true, rr == RD_OK ? r.status : 0);
    resp_free(&r);
}

static void *client_main(void *arg)
{
    client *c = arg;
    switch (c->role) {
    case R_CALIBRATE:
    case R_KEEPALIVE:
        normal_client(c, true);
        break;
    case R_CLOSE:
        normal_client(c, false);
        break;
    case R_SLOWLORIS:
        while (now() < c->end)
            slowloris_once(c, c->end);
        break;
    case R_SLOW_CONN:
        slowloris_once(c, c->end);
        break;
    case R_SLOW_BODY:
    case R_SLOW_READ:
    case R_ABORT_UPLOAD:
    case R_ABORT_QUEUED:
        while (now() < c->end) {
            plan p = {.close_conn = true, .abort_after = SIZE_MAX, .abandon_ms = -1,
                      .deadline = c->hard_end};
            double pause = O.backoff_ms;
            if (c->role == R_SLOW_BODY) {
                p.t = pick(&c->r, T_SMALL);
                p.body_chunk = (size_t)O.slow_body_bytes;
                p.body_ms = O.slow_body_ms;
            } else if (c->role == R_SLOW_READ) {
                p.t = pick(&c->r, T_SLOWREAD);
                p.read_chunk = (size_t)O.slow_read_bytes;
                p.read_ms = O.slow_read_ms;
                p.rcvbuf = 4096;
            } else if (c->role == R_ABORT_UPLOAD) {
                p.t = pick(&c->r, T_MIX);
                p.abort_after = (size_t)(p.t->len * (0.05 + 0.9 * rng_unit(&c->r)));
                pause = 200;
            } else {
                p.t = pick(&c->r, T_MIX);
                p.abandon_ms = (int)(500 * rng_unit(&c->r));
                pause = O.abandon_pause_ms;
            }
            int fd = -1, status;
            bool reused = false, retry;
            double lat;
            outcome o = run_request(c, &fd, &reused, &p, &retry, &status, &lat);
            close_fd(&fd, false);
            if (o != OUT_OK || c->role == R_ABORT_UPLOAD || c->role == R_ABORT_QUEUED)
                backoff(c, pause);
        }
        break;
    case R_ENCODE_PROBE: {
        const tmpl *t = NULL;
        for (int i = 0; i < n_tpl && !t; i++)
            if (TPL[i].cls == T_SMALL && TPL[i].kind == BODY_RAW && TPL[i].fmt == FMT_NPY)
                t = &TPL[i];
        if (!t)
            t = pick(&c->r, T_SMALL);
        while (now() < c->end) {
            double t0 = now();
            plan p = {.t = t, .close_conn = true, .abort_after = SIZE_MAX, .abandon_ms = -1,
                      .deadline = now() + O.encode_deadline};
            int fd = -1, status;
            bool reused = false, retry;
            double lat = 0;
            outcome o = run_request(c, &fd, &reused, &p, &retry, &status, &lat);
            close_fd(&fd, false);
            char why[160];
            snprintf(why, sizeof why, "at %.1f s: %s (status %d) after %.0f ms", now() - T0,
                     out_names[o], status, (now() - t0) * 1e3);
            probe_add(&c->enc, o == OUT_OK, now() - t0, why);
            double next = t0 + 1;
            sleep_s(fmin(next, c->end) - now());
        }
        break;
    }
    default:
        break;
    }
    return NULL;
}

static struct sockaddr_in loopback(uint32_t host_order)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(host_order);
    return a;
}

/* Normal clients come from 127.1.x.y (one address each, or --spread of them), attackers
 * from 127.0.0.2.. (--attackers of them), probes from 127.0.0.1. */
static client *spawn(role r, int id, double end, double hard_end, int requests_max)
{
    client *c = calloc(1, sizeof *c);
    if (!c)
        die("out of memory");
    c->id = id;
    c->role = r;
    c->r.s = 0x9E3779B97F4A7C15ULL * (uint64_t)(id + 1) ^ (uint64_t)O.seed << 32 ^ (uint64_t)r;
    rng_next(&c->r);
    c->end = end;
    c->hard_end = hard_end;
    c->requests_max = requests_max;
    const bool normal = r == R_KEEPALIVE || r == R_CLOSE || r == R_CALIBRATE;
    if (normal && O.spread != 0) {
        int k = O.spread > 0 ? id % O.spread : id;
        c->src = loopback(0x7F010000u + 1 + (uint32_t)k);
        c->bind_src = true;
    } else if (!normal && r != R_ENCODE_PROBE && O.attackers > 0) {
        c->src = loopback(0x7F000002u + (uint32_t)(id % O.attackers));
        c->bind_src = true;
    }
    pthread_mutex_lock(&S.lock);
    S.clients[r]++;
    pthread_mutex_unlock(&S.lock);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&c->th, &attr, client_main, c) != 0)
        die("pthread_create: %s", strerror(errno));
    pthread_attr_destroy(&attr);
    return c;
}

static void client_free(client *c)
{
    free(c->held);
    free(c->closed_by_daemon);
    free(c->held_status);
    free(c->enc.lat);
    free(c);
}

/* ================================================================ checks and report */

static int n_pass, n_fail;
static char checks[64][320];
static int n_checks;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...)
{
    char text[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ok ? n_pass++ : n_fail++;
    if (n_checks < 64)
        snprintf(checks[n_checks++], sizeof checks[0], "%s  %s", ok ? "PASS" : "FAIL", text);
    note("%s: %s", ok ? "pass" : "FAIL", text);
}

static uint64_t role_total(role r)
{
    uint64_t n = 0;
    for (int o = 0; o < N_OUT; o++)
        n += S.n[r][o];
    return n;
}

static void print_roles(role from, role to)
{
    printf("  %-13s %7s %8s", "role", "clients", "requests");
    for (int o = 0; o < N_OUT; o++)
        printf(" %8s", out_names[o]);
    printf(" %9s\n", "images ok");
    for (int r = (int)from; r <= (int)to; r++) {
        if (!S.clients[r] && !role_total((role)r))
            continue;
        printf("  %-13s %7d %8llu", role_names[r], S.clients[r], (unsigned long long)role_total((role)r));
        for (int o = 0; o < N_OUT; o++)
            printf(" %8llu", (unsigned long long)S.n[r][o]);
        printf(" %9llu\n", (unsigned long long)S.images_ok[r]);
        char other[256] = "";
        int at = 0;
        for (int s = 100; s < 600 && at < 200; s++)
            if (S.other_status[r][s])
                at += snprintf(other + at, sizeof other - (size_t)at, " %d x%u", s, S.other_status[r][s]);
        if (at)
            printf("  %-13s other statuses:%s\n", "", other);
    }
}

static void print_held(const char *what, client **cs, int n)
{
    int total = 0, by_daemon = 0, connfail = 0, early = 0;
    double *v = NULL;
    int nv = 0;
    double longest_open = 0;
    int statuses[600] = {0};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cs[i]->n_held; k++) {
            total++;
            if (cs[i]->held_status[k] < 0) {
                connfail++;
                continue;
            }
            if (cs[i]->closed_by_daemon[k]) {
                by_daemon++;
                v = xrealloc(v, sizeof *v * (size_t)(nv + 1));
                v[nv++] = cs[i]->held[k];
                if (cs[i]->held[k] < 0.1)
                    early++;
                if (cs[i]->held_status[k] > 0 && cs[i]->held_status[k] < 600)
                    statuses[cs[i]->held_status[k]]++;
            } else if (cs[i]->held[k] > longest_open) {
                longest_open = cs[i]->held[k];
            }
        }
    printf("  %s: %d connections; %d closed by the daemon", what, total, by_daemon);
    if (nv) {
        double mn = percentile(v, nv, 0), md = percentile(v, nv, 0.5), mx = percentile(v, nv, 1);
        printf(" after %.1f / %.1f / %.1f s (min / median / max), %d of them at once (< 0.1 s)",
               mn, md, mx, early);
    }
    printf("; %d still open when we left (held %.1f s)", total - by_daemon - connfail, longest_open);
    if (connfail)
        printf("; %d could not connect", connfail);
    printf("\n");
    if (nv) { /* each connection the daemon closed, by how long it kept it */
        static const double edges[] = {0.1, 1, 5, 10, 20, 30, 60};
        int counts[8] = {0};
        for (int i = 0; i < nv; i++) {
            int b = 0;
            while (b < 7 && v[i] >= edges[b])
                b++;
            counts[b]++;
        }
        printf("  %s: closed after <0.1 s: %d, 0.1-1 s: %d, 1-5 s: %d, 5-10 s: %d, 10-20 s: %d, "
               "20-30 s: %d, 30-60 s: %d, >60 s: %d\n", what, counts[0], counts[1], counts[2],
               counts[3], counts[4], counts[5], counts[6], counts[7]);
    }
    int at = 0;
    char st[200] = "";
    for (int s = 100; s < 600 && at < 180; s++)
        if (statuses[s])
            at += snprintf(st + at, sizeof st - (size_t)at, " %d x%d", s, statuses[s]);
    if (at)
        printf("  %s: the daemon answered before closing:%s\n", what, st);
    free(v);
}

/* ================================================================ command line */

static void usage(FILE *fp)
{
    fprintf(fp,
"usage: latentd-load [options] [-- latentd flags...]\n"
"  Starts LATENTD_BIN (or --latentd) on 127.0.0.1 with the fixture model, or attaches\n"
"  to a running daemon (--port and --pid), and runs the phases of --mode.\n"
"where:\n"
"  --latentd PATH          the daemon (default $LATENTD_BIN)\n"
"  --latent-encode PATH    CLI for references of images without expected values\n"
"  --fixtures DIR          tests/fixtures (default $LATENTD_FIXTURES or tests/fixtures)\n"
"  --model NAME            fixture model (default tiny-sd)\n"
"  --set KEY=VALUE         passed to latentd (any config key); repeatable\n"
"  --port N --pid PID      attach to a running daemon instead of starting one\n"
"  --mode all|overload|slowloris   which phases (default all)\n"
"  --workdir DIR           for the log and generated images (default a fresh /tmp dir)\n"
"  --keep                  keep the workdir (it is kept anyway when a check fails)\n"
"unloaded phase:\n"
"  --base-clients N        clients (default 4)\n"
"  --calib-seconds S       duration (default 10)   --calib-requests N   stop after N\n"
"overload phase:\n"
"  --clients N             clients (default 128)\n"
"  --duration S            attack duration (default 25)\n"
"  --grace S               wait for answers after it (default 15)\n"
"  --patience S            well-behaved clients wait this long for an answer (default 15)\n"
"  --mix ROLE=W,...        weights of keepalive, close, slow-body, slowloris, abort-upload,\n"
"                          abort-queued, slow-read (default 40,20,6,10,8,6,10)\n"
"  --backoff-ms N          pause after a 503 or error (default 100, x0.5..1.5)\n"
"  --abandon-pause-ms N    abort-queued clients' pause between requests (default 2000)\n"
"  --min-ratio R           overload/unloaded images/s at least (default 0.8)\n"
"  --min-mpx-ratio R       the same in Mpx/s, so that big images are not starved (0.6; 0: off)\n"
"  --rss-limit-mb N        peak RSS at most (default 0: reported, not checked)\n"
"slow clients:\n"
"  --slow-conns N          slowloris mode: connections (default 130)\n"
"  --slow-interval S       a header byte every S seconds (default 8)\n"
"  --slow-hold S           slowloris mode: hold them this long (default 20)\n"
"  --slow-max-hold S       fail if the daemon keeps one longer (default 0: report only)\n"
"  --slow-body BYTES/MS    slow-body pace (default 1024/500)\n"
"  --slow-read BYTES/MS    slow-read pace (default 1024/100)\n"
"bounds:\n"
"  --healthz-deadline S    (default 2)   --encode-deadline S (default 5)\n"
"  --probe-ms N            /healthz every N ms (default 250)\n"
"  --drain-wait S          for the queue to empty after the attack (default 30)\n"
"  --settle S              for threads and fds to return (default 5)\n"
"  --start-timeout S  --stop-timeout S   (default 30, 30)\n"
"other:\n"
"  --tolerance X           latents metric max|a-b|/(1+|b|) (default 1e-4)\n"
"  --spread N              normal clients' source addresses (default: one each; 0: 127.0.0.1)\n"
"  --attackers N           hostile clients' source addresses (default 1; 0: 127.0.0.1)\n"
"  --seed N  --verbose\n");
}

static void parse_pace(const char *v, int *bytes, int *ms)
{
    if (sscanf(v, "%d/%d", bytes, ms) != 2 || *bytes <= 0 || *ms < 0)
        die("want BYTES/MS, got '%s'", v);
}

static void parse_mix(const char *v)
{
    char copy[512];
    snprintf(copy, sizeof copy, "%s", v);
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (!eq)
            die("--mix wants role=weight, got '%s'", tok);
        *eq = '\0';
        int r = 0;
        while (r < N_MIX_ROLES && strcmp(role_names[r], tok) != 0)
            r++;
        if (r == N_MIX_ROLES)
            die("--mix: unknown role '%s'", tok);
        O.mix[r] = atoi(eq + 1);
    }
}

static void parse_args(int argc, char **argv)
{
    O.bin = getenv("LATENTD_BIN");
    O.fixtures = getenv("LATENTD_FIXTURES") ? getenv("LATENTD_FIXTURES") : "tests/fixtures";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            for (i++; i < argc && O.n_daemon_args < 120; i++)
                O.daemon_args[O.n_daemon_args++] = argv[i];
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--keep")) {
            O.keep_workdir = true;
            continue;
        }
        if (!strcmp(a, "--verbose")) {
            O.verbose = true;
            continue;
        }
        if (i + 1 >= argc)
            die("%s wants a value (see --help)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--latentd")) O.bin = v;
        else if (!strcmp(a, "--latent-encode")) O.encoder_cli = *v ? v : NULL;
        else if (!strcmp(a, "--fixtures")) O.fixtures = v;
        else if (!strcmp(a, "--model")) O.model = v;
        else if (!strcmp(a, "--workdir")) O.workdir = v;
        else if (!strcmp(a, "--set")) {
            if (O.n_daemon_args > 118)
                die("too many --set");
            O.daemon_args[O.n_daemon_args++] = "--set";
            O.daemon_args[O.n_daemon_args++] = v;
        } else if (!strcmp(a, "--port")) O.attach_port = atoi(v);
        else if (!strcmp(a, "--pid")) O.attach_pid = (pid_t)atoi(v);
        else if (!strcmp(a, "--mode")) {
            O.run_overload = !strcmp(v, "all") || !strcmp(v, "overload");
            O.run_slowloris = !strcmp(v, "all") || !strcmp(v, "slowloris");
            if (!O.run_overload && !O.run_slowloris)
                die("--mode: all, overload or slowloris");
        } else if (!strcmp(a, "--base-clients")) O.base_clients = atoi(v);
        else if (!strcmp(a, "--calib-seconds")) O.calib_seconds = atof(v);
        else if (!strcmp(a, "--calib-requests")) O.calib_requests = atoi(v);
        else if (!strcmp(a, "--clients")) O.clients = atoi(v);
        else if (!strcmp(a, "--duration")) O.duration = atof(v);
        else if (!strcmp(a, "--grace")) O.grace = atof(v);
        else if (!strcmp(a, "--patience")) O.patience = atof(v);
        else if (!strcmp(a, "--mix")) parse_mix(v);
        else if (!strcmp(a, "--backoff-ms")) O.backoff_ms = atoi(v);
        else if (!strcmp(a, "--abandon-pause-ms")) O.abandon_pause_ms = atoi(v);
        else if (!strcmp(a, "--min-ratio")) O.min_ratio = atof(v);
        else if (!strcmp(a, "--min-mpx-ratio")) O.min_mpx_ratio = atof(v);
        else if (!strcmp(a, "--rss-limit-mb")) O.rss_limit_mb = atol(v);
        else if (!strcmp(a, "--slow-conns")) O.slow_conns = atoi(v);
        else if (!strcmp(a, "--slow-interval")) O.slow_interval = atof(v);
        else if (!strcmp(a, "--slow-hold")) O.slow_hold = atof(v);
        else if (!strcmp(a, "--slow-max-hold")) O.slow_max_hold = atof(v);
        else if (!strcmp(a, "--slow-body")) parse_pace(v, &O.slow_body_bytes, &O.slow_body_ms);
        else if (!strcmp(a, "--slow-read")) parse_pace(v, &O.slow_read_bytes, &O.slow_read_ms);
        else if (!strcmp(a, "--healthz-deadline")) O.healthz_deadline = atof(v);
        else if (!strcmp(a, "--encode-deadline")) O.encode_deadline = atof(v);
        else if (!strcmp(a, "--probe-ms")) O.probe_ms = atoi(v);
        else if (!strcmp(a, "--drain-wait")) O.drain_wait = atof(v);
        else if (!strcmp(a, "--settle")) O.settle = atof(v);
        else if (!strcmp(a, "--start-timeout")) O.start_timeout = atof(v);
        else if (!strcmp(a, "--stop-timeout")) O.stop_timeout = atof(v);
        else if (!strcmp(a, "--tolerance")) O.tol = atof(v);
        else if (!strcmp(a, "--spread")) O.spread = atoi(v);
        else if (!strcmp(a, "--attackers")) O.attackers = atoi(v);
        else if (!strcmp(a, "--seed")) O.seed = (unsigned)strtoul(v, NULL, 10);
        else
            die("unknown option %s (see --help)", a);
    }
    if (!O.attach_port && !O.bin)
        die("no daemon: set LATENTD_BIN, or --latentd PATH, or --port/--pid");
    if (O.attach_port && !O.attach_pid)
        die("--port wants --pid too (for /proc)");
    if (O.base_clients < 1 || O.clients < 1 || O.duration <= 0 || O.slow_conns < 0 ||
        O.slow_interval <= 0 || O.probe_ms < 10)
        die("bad option values (see --help)");
}

/* ================================================================ phases */

static void reference_phase(void)
{
    note("reference: one request at a time, every image alone");
    int adopted = 0, failed = 0;
    double worst = 0;
    char first[300] = "";
    for (int i = 0; i < n_img; i++) {
        image *im = &IMG[i];
        tmpl t = {0};
        t.n = 1;
        t.img[0] = i;
        t.kind = BODY_RAW;
        t.fmt = FMT_SAFETENSORS;
        t.pixels = (double)im->w * im->h;
        snprintf(t.name, sizeof t.name, "raw->safetensors %s", im->name);
        snprintf(t.path, sizeof t.path, "/v1/encode?format=safetensors&outputs=latents");
        snprintf(t.ctype, sizeof t.ctype, "%s", im->ctype);
        t.body = im->bytes;
        t.len = im->len;
        int fd = tcp_connect(NULL, 0, now() + 10);
        char head[512];
        int hl = snprintf(head, sizeof head,
                          "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                          t.path, PORT, t.ctype, t.len);
        size_t sent;
        http_resp r = {0};
        bool got = fd >= 0 &&
                   send_paced(fd, head, (size_t)hl, t.body, (size_t)hl + t.len, 0, 0, now() + 30,
                              &sent) == SEND_DONE &&
                   read_response(fd, now() + 60, 0, 0, &r) == RD_OK;
        if (fd >= 0)
            close(fd);
        char why[300] = "";
        tensor x = {0};
        if (got)
            count_status(r.status);
        bool ok = got && r.status == 200 && st_tensor(r.body, r.body_len, "latents", &x, why, sizeof why);
        if (!got)
            snprintf(why, sizeof why, "%s: no answer", im->name);
        else if (r.status != 200)
            snprintf(why, sizeof why, "%s: status %d: %.150s", im->name, r.status, (const char *)r.body);
        record(R_REFERENCE, ok ? OUT_OK : got && r.status == 200 ? OUT_WRONG : OUT_OTHER,
               got ? r.status : 0, 1, t.pixels, true, got);
        if (ok && im->ref) {
            ok = x.ndim == 4 && x.numel == (size_t)im->c * im->lh * im->lw;
            double e = ok ? rel_error(x.data, im->ref, x.numel) : INFINITY;
            worst = fmax(worst, e);
            ok = e <= O.tol;
            if (!ok)
                snprintf(why, sizeof why, "%s: off by %.3g from the %s reference", im->name, e, im->ref_from);
            free(x.data);
        } else if (ok) {
            ok = adopt_ref(im, &x, "daemon", why, sizeof why);
            adopted += ok;
        } else {
            free(x.data);
        }
        if (!ok && !failed++)
            snprintf(first, sizeof first, "%s", why);
        resp_free(&r);
    }
    /* the JPEG against its PNG, loosely (lossy input; see tests/test_service.c) */
    for (int i = 0; i < n_img; i++) {
        image *j = &IMG[i];
        if (j->loose_of < 0 || !j->ref || !IMG[j->loose_of].ref)
            continue;
        const float *a = j->ref, *b = IMG[j->loose_of].ref;
        double d = 0, nrm = 0;
        for (size_t k = 0, n = (size_t)j->c * j->lh * j->lw; k < n; k++) {
            d += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
            nrm += (double)b[k] * b[k];
        }
        if (!(sqrt(d / nrm) < 0.5)) {
            if (!failed++)
                snprintf(first, sizeof first, "%s: %.2f (relative L2) from %s", j->name,
                         sqrt(d / nrm), IMG[j->loose_of].name);
        }
    }
    int from_fixtures = 0, from_cli = 0;
    for (int i = 0; i < n_img; i++) {
        from_fixtures += IMG[i].ref_from && !strcmp(IMG[i].ref_from, "fixtures");
        from_cli += IMG[i].ref_from && !strcmp(IMG[i].ref_from, "latent-encode");
        if (!IMG[i].ref)
            die("no reference for %s: %s", IMG[i].name, first);
    }
    check(failed == 0,
          "quiet answers match the references (%d images: %d fixtures, %d latent-encode, %d taken "
          "from the daemon; worst %.2g)%s%s", n_img, from_fixtures, from_cli, adopted, worst,
          failed ? ": " : "", first);
}

static window W_CALIB, W_OVER;

static void run_clients(role r, int n, int first_id, double end, double hard_end, int requests_max,
                        client **out)
{
    for (int i = 0; i < n; i++)
        out[i] = spawn(r, first_id + i, end, hard_end, requests_max);
}

static void join_clients(client **cs, int n)
{
    for (int i = 0; i < n; i++)
        pthread_join(cs[i]->th, NULL);
}

static double calibrate(void)
{
    note("unloaded: %d clients for %.0f s%s", O.base_clients, O.calib_seconds,
         O.calib_requests ? " (or the request count)" : "");
    client *cs[256];
    int n = O.base_clients > 256 ? 256 : O.base_clients;
    int per = O.calib_requests ? (O.calib_requests + n - 1) / n : 0;
    atomic_store(&deck_next, 0);
    window_open(&W_CALIB, O.calib_seconds);
    run_clients(R_CALIBRATE, n, 0, W_CALIB.end, W_CALIB.end + 60, per, cs);
    if (!per)
        sleep_s(W_CALIB.end - now());
    else
        join_clients(cs, n);
    if (now() < W_CALIB.end) /* stopped by the request count */
        W_CALIB.end = now();
    window_cpu(&W_CALIB);
    if (!per)
        join_clients(cs, n);
    window_close();
    for (int i = 0; i < n; i++)
        client_free(cs[i]);
    double secs = W_CALIB.end - W_CALIB.start;
    double ips = W_CALIB.images / secs;
    uint64_t total = role_total(R_CALIBRATE);
    note("unloaded: %llu images in %.1f s: %.2f images/s, %.2f Mpx/s",
         (unsigned long long)W_CALIB.images, secs, ips, W_CALIB.pixels / secs / 1e6);
    check(S.n[R_CALIBRATE][OUT_OK] == total && total > 0,
          "unloaded: every request answered 200 and right (%llu of %llu)",
          (unsigned long long)S.n[R_CALIBRATE][OUT_OK], (unsigned long long)total);
    return ips;
}

typedef struct {
    proc_sample after;
    long rss_peak_kb;
    bool idle, settled;
    probe_stats health;
    client **clients;
    int n_clients;
} daemon_figures;

static void overload(double unloaded_ips, const proc_sample *before, daemon_figures *f)
{
    int weights = 0;
    for (int r = 0; r < N_MIX_ROLES; r++)
        weights += O.mix[r];
    if (weights <= 0)
        die("--mix: all weights are zero");
    int counts[N_MIX_ROLES], given = 0;
    for (int r = 0; r < N_MIX_ROLES; r++)
        given += counts[r] = O.clients * O.mix[r] / weights;
    for (int r = 0; given < O.clients; r = (r + 1) % N_MIX_ROLES) /* the rest by weight order */
        if (O.mix[r])
            counts[r]++, given++;
    char desc[256];
    int at = 0;
    for (int r = 0; r < N_MIX_ROLES; r++)
        at += snprintf(desc + at, sizeof desc - (size_t)at, "%s%d %s", r ? ", " : "", counts[r], role_names[r]);
    note("overload: %d clients for %.0f s (+%.0f s grace): %s", O.clients, O.duration, O.grace, desc);

    client **cs = xmalloc(sizeof *cs * (size_t)O.clients);
    rss_reset();
    health_start();
    atomic_store(&deck_next, 0);
    window_open(&W_OVER, O.duration);
    int n = 0;
    for (int r = 0; r < N_MIX_ROLES; r++)
        for (int k = 0; k < counts[r]; k++, n++)
            cs[n] = spawn((role)r, n, W_OVER.end, W_OVER.end + O.grace, 0);
    sleep_s(W_OVER.end - now());
    window_cpu(&W_OVER);
    note("overload: time is up; waiting for answers still on their way (at most %.0f s)", O.grace);
    join_clients(cs, n);
    health_stop();
    window_close();
    pthread_mutex_lock(&RSS.lock);
    f->rss_peak_kb = RSS.peak_kb;
    pthread_mutex_unlock(&RSS.lock);

    metrics m;
    note("overload: waiting for the daemon to empty its queue (at most %.0f s)", O.drain_wait);
    double t = now();
    f->idle = wait_idle(O.drain_wait, &m);
    note("overload: %s after %.1f s; waiting for threads and fds to return (at most %.0f s)",
         f->idle ? "idle" : "STILL BUSY", now() - t, O.settle);
    f->settled = settle(O.settle, before, &f->after);

    const double secs = W_OVER.end - W_OVER.start;
    const double ips = W_OVER.images / secs;
    note("overload: %llu images in %.1f s: %.2f images/s, %.2f Mpx/s", (unsigned long long)W_OVER.images,
         secs, ips, W_OVER.pixels / secs / 1e6);

    uint64_t wrong = 0, n503 = 0, unanswered_normal = 0, other_normal = 0;
    for (int r = 0; r < N_MIX_ROLES; r++) {
        wrong += S.n[r][OUT_WRONG];
        n503 += S.n[r][OUT_503];
    }
    for (int r = R_KEEPALIVE; r <= R_CLOSE; r++) {
        unanswered_normal += S.n[r][OUT_CLOSED] + S.n[r][OUT_TIMEOUT] + S.n[r][OUT_CONNFAIL];
        other_normal += S.n[r][OUT_OTHER];
    }
    uint64_t normal_total = role_total(R_KEEPALIVE) + role_total(R_CLOSE);
    check(wrong == 0, "overload: every 200 answer is the right one (%llu wrong)", (unsigned long long)wrong);
    check(S.no_retry_after == 0, "overload: every 503 carries Retry-After (%llu 503s, %llu without)",
          (unsigned long long)n503, (unsigned long long)S.no_retry_after);
    check(unanswered_normal == 0 && other_normal == 0,
          "overload: well-formed requests get 200 or 503 (of %llu: %llu no answer, %llu other status)",
          (unsigned long long)normal_total, (unsigned long long)unanswered_normal,
          (unsigned long long)other_normal);
    check(unloaded_ips > 0 && ips >= O.min_ratio * unloaded_ips,
          "overload: throughput %.2f images/s >= %.0f%% of unloaded %.2f (ratio %.2f)%s", ips,
          O.min_ratio * 100, unloaded_ips, unloaded_ips > 0 ? ips / unloaded_ips : 0,
          W_CALIB.images < 30 ? " -- the unloaded phase saw under 30 images: a noisy base" : "");
    /* images/s alone rewards a daemon that lets small images through and starves big ones */
    const double unloaded_mpx = W_CALIB.pixels / (W_CALIB.end - W_CALIB.start) / 1e6;
    const double mpx = W_OVER.pixels / secs / 1e6;
    if (O.min_mpx_ratio > 0)
        check(unloaded_mpx > 0 && mpx >= O.min_mpx_ratio * unloaded_mpx,
              "overload: work throughput %.3f Mpx/s >= %.0f%% of unloaded %.3f (ratio %.2f): big "
              "images are not starved", mpx, O.min_mpx_ratio * 100, unloaded_mpx,
              unloaded_mpx > 0 ? mpx / unloaded_mpx : 0);
    f->health = HEALTH.st;
    memset(&HEALTH.st, 0, sizeof HEALTH.st);
    check(f->health.n > 0 && f->health.ok == f->health.n,
          "overload: /healthz answered within %.1f s (%d of %d probes; worst %.0f ms)%s%s",
          O.healthz_deadline, f->health.ok, f->health.n, f->health.worst * 1e3,
          f->health.first_fail[0] ? "; first miss " : "", f->health.first_fail);
    f->clients = cs; /* kept for the report */
    f->n_clients = n;
}

static void slowloris_phase(const proc_sample *before, daemon_figures *f)
{
    note("slowloris: %d connections sending a header byte every %.1f s, held %.0f s; "
         "/healthz every %d ms, an encode every second", O.slow_conns, O.slow_interval, O.slow_hold,
         O.probe_ms);
    rss_reset();
    const double end = now() + O.slow_hold;
    client **cs = xmalloc(sizeof *cs * (size_t)(O.slow_conns + 1));
    for (int i = 0; i < O.slow_conns; i++)
        cs[i] = spawn(R_SLOW_CONN, i, end, end, 0);
    sleep_s(fmin(1.0, O.slow_hold / 4)); /* let them connect and send their first byte */
    health_start();
    client *enc = spawn(R_ENCODE_PROBE, O.slow_conns, end, end + O.encode_deadline, 0);
    join_clients(cs, O.slow_conns);
    pthread_join(enc->th, NULL);
    health_stop();
    cs[O.slow_conns] = enc;
    pthread_mutex_lock(&RSS.lock);
    f->rss_peak_kb = RSS.peak_kb;
    pthread_mutex_unlock(&RSS.lock);
    f->health = HEALTH.st;
    memset(&HEALTH.st, 0, sizeof HEALTH.st);
    f->clients = cs;
    f->n_clients = O.slow_conns + 1;

    check(f->health.n > 0 && f->health.ok == f->health.n,
          "slowloris: /healthz answered within %.1f s while %d slow connections were held "
          "(%d of %d probes; worst %.0f ms)%s%s", O.healthz_deadline, O.slow_conns, f->health.ok,
          f->health.n, f->health.worst * 1e3, f->health.first_fail[0] ? "; first miss " : "",
          f->health.first_fail);
    check(enc->enc.n > 0 && enc->enc.ok == enc->enc.n,
          "slowloris: an encode answered 200 and right within %.1f s meanwhile (%d of %d; worst "
          "%.0f ms)%s%s", O.encode_deadline, enc->enc.ok, enc->enc.n, enc->enc.worst * 1e3,
          enc->enc.first_fail[0] ? "; first miss " : "", enc->enc.first_fail);
    if (O.slow_max_hold > 0) {
        double longest = 0;
        int open_long = 0;
        for (int i = 0; i < O.slow_conns; i++)
            for (int k = 0; k < cs[i]->n_held; k++) {
                longest = fmax(longest, cs[i]->held[k]);
                open_long += cs[i]->held[k] > O.slow_max_hold;
            }
        check(open_long == 0, "slowloris: the daemon drops a slow connection within %.1f s (%d kept "
              "longer; longest %.1f s)", O.slow_max_hold, open_long, longest);
    }
    metrics m;
    f->idle = wait_idle(O.drain_wait, &m);
    f->settled = settle(O.settle, before, &f->after);
    check(f->settled, "slowloris: threads and fds back to %d and %d once the slow clients left "
          "(now %d and %d)", before->threads, before->fds, f->after.threads, f->after.fds);
}

static void *watchdog_main(void *arg)
{
    double budget = *(double *)arg;
    sleep_s(budget);
    fprintf(stderr, "latentd-load: WATCHDOG: still running after %.0f s; killing the daemon\n", budget);
    if (D.spawned && D.pid > 0)
        kill(D.pid, SIGKILL);
    _exit(3);
}

static void print_probe(const char *what, probe_stats *p)
{
    if (!p->n)
        return;
    double p50 = percentile(p->lat, p->n, 0.5), p99 = percentile(p->lat, p->n, 0.99);
    printf("  %-28s %4d probes, %4d ok; latency p50 %.1f ms, p99 %.1f ms, worst %.1f ms\n", what,
           p->n, p->ok, p50 * 1e3, p99 * 1e3, p->worst * 1e3);
}

int main(int argc, char **argv)
{
    T0 = now();
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_args(argc, argv);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    char tmpdir[] = "/tmp/latentd-load.XXXXXX";
    if (!O.workdir) {
        if (!mkdtemp(tmpdir))
            die("mkdtemp: %s", strerror(errno));
        O.workdir = tmpdir;
    } else {
        mkdir(O.workdir, 0700);
    }
    static double budget;
    budget = O.start_timeout + O.stop_timeout + 120 +
             (O.run_overload ? O.calib_seconds + O.duration + O.grace + O.drain_wait + 2 * O.settle : 0) +
             (O.run_slowloris ? O.slow_hold + O.encode_deadline + O.drain_wait + O.settle : 0);
    pthread_t watchdog;
    pthread_create(&watchdog, NULL, watchdog_main, &budget);
    pthread_detach(watchdog);

    load_images();
    build_templates();
    build_deck();
    if (O.attach_port) {
        PORT = O.attach_port;
        PID = O.attach_pid;
    } else {
        start_daemon();
        PID = D.pid;
    }
    TARGET = loopback(0x7F000001u);
    TARGET.sin_port = htons((uint16_t)PORT);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const double load_start = load1();
    note("latentd pid %d on 127.0.0.1:%d; workdir %s; %ld cores, load average %.2f%s", (int)PID,
         PORT, O.workdir, cores, load_start,
         load_start > cores * 0.5 ? " (other work on this machine will skew the figures)" : "");
    pthread_create(&RSS.th, NULL, rss_main, NULL);

    /* /metrics before anything: the window in which the client's counts must agree */
    uint64_t base[600];
    memcpy(base, S.status, sizeof base);
    metrics m0, m1;
    if (!scrape(&m0))
        die("GET /metrics failed");

    reference_phase();
    double unloaded = 0;
    if (O.run_overload)
        unloaded = calibrate();
    metrics m;
    bool idle0 = wait_idle(O.drain_wait, &m);
    proc_sample before, after;
    settle(O.settle, NULL, &before);
    note("idle baseline: %s; RSS %.1f MiB, %d threads, %d fds", idle0 ? "idle" : "NOT IDLE",
         before.rss_kb / 1024.0, before.threads, before.fds);

    daemon_figures fo = {0}, fs = {0};
    if (O.run_overload && !daemon_gone())
        overload(unloaded, &before, &fo);
    if (O.run_slowloris && !daemon_gone()) {
        if (O.run_overload && !fo.idle)
            note("slowloris: WARNING: the daemon is still busy with the overload's work");
        slowloris_phase(&before, &fs);
    }
    proc_read(&after);
    const long peak_kb = fmax(fmax(fo.rss_peak_kb, fs.rss_peak_kb), after.hwm_kb);
    if (O.run_overload) {
        check(fo.settled && fo.after.threads == before.threads,
              "overload: threads back to %d once the clients left and the daemon idled (now %d)",
              before.threads, fo.after.threads);
        check(fo.settled && fo.after.fds == before.fds,
              "overload: open fds back to %d once the clients left and the daemon idled (now %d)",
              before.fds, fo.after.fds);
    }
    if (O.rss_limit_mb > 0)
        check(peak_kb <= O.rss_limit_mb * 1024, "peak RSS %.0f MiB <= %ld MiB (VmHWM %.0f MiB)",
              peak_kb / 1024.0, O.rss_limit_mb, after.hwm_kb / 1024.0);

    /* the daemon's counters against ours: every answer we read is counted; what it
     * counted beyond that is bounded by the requests whose answer we never read */
    bool scraped = scrape(&m1);
    if (!scraped)
        note("GET /metrics failed at the end: the counters cannot be compared");
    uint64_t client_status[600], excess = 0;
    bool under = false;
    char mism[300] = "";
    int mat = 0;
    for (int s = 0; s < 600; s++) {
        client_status[s] = S.status[s] - base[s] - (s == 200); /* not the closing scrape */
        uint64_t daemon = m1.status[s] - m0.status[s];
        if (daemon < client_status[s]) {
            under = true;
            mat += snprintf(mism + mat, sizeof mism - (size_t)(mat < 290 ? mat : 290), " %d: daemon %llu < client %llu;", s,
                            (unsigned long long)daemon, (unsigned long long)client_status[s]);
        } else {
            excess += daemon - client_status[s];
        }
    }
    check(scraped && !under && excess <= S.unanswered,
          "/metrics: every answer the clients read is counted, and the %llu counted beyond them "
          "<= %llu requests left unanswered%s", (unsigned long long)excess,
          (unsigned long long)S.unanswered, mism);
    const uint64_t dimg = m1.images - m0.images;
    check(scraped && dimg >= S.images_200 && dimg <= S.images_200 + S.images_slack,
          "/metrics: images encoded %llu within [%llu in 200 answers, + %llu sent without a 200]",
          (unsigned long long)dimg, (unsigned long long)S.images_200, (unsigned long long)S.images_slack);

    int exit_status = 0;
    double stop_took = 0;
    if (D.spawned) {
        bool died;
        exit_status = stop_daemon(&stop_took, &died);
        if (died)
            check(false, "latentd stayed up through the run (it exited %.1f s before the end%s)",
                  now() - D.exited_at, WIFSIGNALED(D.wstatus) ? ", by a signal" : "");
        else if (D.killed)
            check(false, "latentd exits 0 on SIGTERM (still running %.0f s after it: killed; "
                  "what was it draining?)", O.stop_timeout);
        else if (WIFSIGNALED(D.wstatus))
            check(false, "latentd exits 0 on SIGTERM (it died of signal %d after %.1f s)",
                  WTERMSIG(D.wstatus), stop_took);
        else
            check(exit_status == 0, "latentd exits 0 on SIGTERM (status %d after %.1f s)",
                  exit_status, stop_took);
    }
    atomic_store(&RSS.stop, true);
    pthread_join(RSS.th, NULL);

    /* ---------------- the report ---------------- */
    printf("\n==== latentd-load report ====\n");
    printf("daemon %s (pid %d), model %s", D.spawned ? O.bin : "attached", (int)PID, O.model);
    for (int i = 0; i < O.n_daemon_args; i++)
        printf(" %s", O.daemon_args[i]);
    printf("\nrequests by outcome (left = closed by the client on purpose):\n");
    print_roles(R_REFERENCE, R_CALIBRATE);
    if (O.run_overload) {
        printf("  -- overload: %d clients for %.1f s (+%.0f s grace)\n", O.clients, O.duration, O.grace);
        print_roles(R_KEEPALIVE, R_SLOW_READ);
    }
    if (O.run_slowloris) {
        printf("  -- slowloris: %d connections for %.1f s\n", O.slow_conns, O.slow_hold);
        print_roles(R_SLOW_CONN, R_ENCODE_PROBE);
    }
    printf("  answers read, by status (every phase and probe):");
    for (int s = 100; s < 600; s++)
        if (client_status[s])
            printf(" %d x%llu", s, (unsigned long long)client_status[s]);
    printf("\n  requests left unanswered: %llu (keep-alive connections closed under a new request, "
           "resent: %llu)\n", (unsigned long long)S.unanswered, (unsigned long long)S.stale_retries);
    const double cs_ = W_CALIB.end - W_CALIB.start, os_ = W_OVER.end - W_OVER.start;
    if (O.run_overload) {
        printf("throughput (images in right 200 answers finished in the window):\n");
        printf("  unloaded  %4d clients %5.1f s %6llu images %7.2f images/s %7.3f Mpx/s\n",
               O.base_clients, cs_, (unsigned long long)W_CALIB.images, W_CALIB.images / cs_,
               W_CALIB.pixels / cs_ / 1e6);
        printf("  overload  %4d clients %5.1f s %6llu images %7.2f images/s %7.3f Mpx/s\n",
               O.clients, os_, (unsigned long long)W_OVER.images, W_OVER.images / os_,
               W_OVER.pixels / os_ / 1e6);
        printf("  ratio     %.2f in images/s (checked, >= %.2f), %.2f in Mpx/s\n",
               W_CALIB.images ? (W_OVER.images / os_) / (W_CALIB.images / cs_) : 0, O.min_ratio,
               W_CALIB.pixels > 0 ? (W_OVER.pixels / os_) / (W_CALIB.pixels / cs_) : 0);
        printf("  CPU       unloaded: daemon %.1f s (%.0f%% of %ld cores), this client %.1f s; "
               "overload: daemon %.1f s (%.0f%%), this client %.1f s\n", W_CALIB.daemon_cpu,
               100 * W_CALIB.daemon_cpu / (cs_ * cores), cores, W_CALIB.client_cpu,
               W_OVER.daemon_cpu, 100 * W_OVER.daemon_cpu / (os_ * cores), W_OVER.client_cpu);
        const double eu = W_CALIB.daemon_cpu > 0 ? W_CALIB.images / W_CALIB.daemon_cpu : 0;
        const double eo = W_OVER.daemon_cpu > 0 ? W_OVER.images / W_OVER.daemon_cpu : 0;
        printf("  images per daemon CPU-second: unloaded %.2f, overload %.2f (ratio %.2f: steadier "
               "than wall-clock figures on a shared machine)\n", eu, eo, eu > 0 ? eo / eu : 0);
        printf("  load average %.2f at the start, %.2f at the end (%ld cores)\n", load_start,
               load1(), cores);
    }
    printf("probes:\n");
    print_probe("/healthz during overload", &fo.health);
    print_probe("/healthz during slowloris", &fs.health);
    if (O.run_slowloris)
        print_probe("encode during slowloris", &fs.clients[O.slow_conns]->enc);
    printf("slow connections (how long the daemon kept them):\n");
    if (O.run_overload) {
        client *lor[1024];
        int nl = 0;
        for (int i = 0; i < fo.n_clients && nl < 1024; i++)
            if (fo.clients[i]->role == R_SLOWLORIS)
                lor[nl++] = fo.clients[i];
        if (nl)
            print_held("overload slowloris", lor, nl);
    }
    if (O.run_slowloris)
        print_held("slowloris mode", fs.clients, O.slow_conns);
    printf("daemon process:\n");
    printf("  RSS       before %6.1f MiB   peak %6.1f MiB   after %6.1f MiB   (peak sampled: "
           "overload %.1f, slowloris %.1f; VmHWM %.1f)%s\n", before.rss_kb / 1024.0,
           peak_kb / 1024.0, after.rss_kb / 1024.0, fo.rss_peak_kb / 1024.0,
           fs.rss_peak_kb / 1024.0, after.hwm_kb / 1024.0,
           O.rss_limit_mb ? "" : "   (no --rss-limit-mb: not checked)");
    printf("  threads   before %4d   peak %4d", before.threads, RSS.peak_threads);
    if (O.run_overload)
        printf("   after overload %4d", fo.after.threads);
    if (O.run_slowloris)
        printf("   after slowloris %4d", fs.after.threads);
    printf("\n  open fds  before %4d   peak %4d", before.fds, RSS.peak_fds);
    if (O.run_overload)
        printf("   after overload %4d", fo.after.fds);
    if (O.run_slowloris)
        printf("   after slowloris %4d", fs.after.fds);
    printf("\n");
    printf("/metrics (daemon) vs answers read (client), over the whole run:\n");
    for (int s = 100; s < 600; s++)
        if (client_status[s] || m1.status[s] - m0.status[s])
            printf("  status %d: daemon %llu, client %llu\n", s,
                   (unsigned long long)(m1.status[s] - m0.status[s]), (unsigned long long)client_status[s]);
    printf("  images encoded: daemon %llu, client %llu in 200 answers (+%llu sent without one)\n",
           (unsigned long long)dimg, (unsigned long long)S.images_200, (unsigned long long)S.images_slack);
    printf("checks:\n");
    for (int i = 0; i < n_checks; i++)
        printf("  %s\n", checks[i]);
    if (D.spawned)
        printf("daemon log: %s\n", D.log_path);
    printf("%d passed, %d failed\n", n_pass, n_fail);

    for (int i = 0; i < fo.n_clients; i++)
        client_free(fo.clients[i]);
    for (int i = 0; i < fs.n_clients; i++)
        client_free(fs.clients[i]);
    free(fo.clients);
    free(fs.clients);
    if (!O.keep_workdir && n_fail == 0 && !strncmp(O.workdir, "/tmp/latentd-load.", 18)) {
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", O.workdir);
        if (system(cmd) != 0)
            note("could not remove %s", O.workdir);
    }
    return n_fail ? 1 : 0;
}
