/* latent-encode --out-dir on a generated tree of images (mixed sizes, nested
 * folders, names with spaces, broken files), run as a user runs it: outputs
 * against the fixtures' expected values, reruns that skip, a run killed or
 * stopped mid-way that resumes to the same files, shards that split the set
 * exactly, --shard auto from Slurm's and Kubernetes' variables, failures. */
#include "latentd/image.h"
#include "latentd/safetensors.h"
#include "testutil.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <png.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifdef HAVE_LIBWEBP
#include <webp/encode.h>
#endif

#define MODEL "models/tiny-sd"
#define CHANNELS 4

static char *dir;

static void setup(void) { dir = make_temp_dir(); }
static void teardown(void)
{
    remove_temp_dir(dir);
}

/* dir/rel in a static buffer per call slot */
static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...)
{
    static char slots[8][4400];
    static int next;
    char *buf = slots[next++ % 8];
    int used = snprintf(buf, 4400, "%s/", dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, 4400 - (size_t)used, fmt, ap);
    va_end(ap);
    return buf;
}

/* "cd dir && exec latent-encode -m MODEL <args>" for sh -c */
static void command(char *buf, size_t size, const char *args)
{
    const char *build = getenv("LATENTD_BUILDDIR");
    snprintf(buf, size, "cd '%s' && exec '%s/latent-encode' -m '%s' %s", dir,
             build ? build : ".", fixture(MODEL), args);
}

static void vcommand(char *buf, size_t size, const char *fmt, va_list ap)
{
    char args[8192];
    vsnprintf(args, sizeof args, fmt, ap);
    command(buf, size, args);
}

/* Exit status, or 128 + the signal that ended it. */
static int status_of(int status)
{
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[12288];
    va_list ap;
    va_start(ap, fmt);
    vcommand(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return status_of(system(cmd));
}

/* The same in the background; the pid is latent-encode's (sh execs it). */
static pid_t spawn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static pid_t spawn(const char *fmt, ...)
{
    char cmd[12288];
    va_list ap;
    va_start(ap, fmt);
    vcommand(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    const pid_t test = getpid();
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        die_with_parent(test);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_for(pid_t pid)
{
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return status_of(status);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Poll for a file the program writes; a deadline only so a bug fails instead of hanging. */
static void wait_for_file(const char *path)
{
    const time_t deadline = time(NULL) + (time_t)(120 * test_time_scale());
    const struct timespec tick = {0, 10000000};
    while (!exists(path)) {
        ck_assert_msg(time(NULL) < deadline, "%s never appeared", path);
        nanosleep(&tick, NULL);
    }
}

/* The output of a shell command (at most 64 KiB). */
static char *capture(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *capture(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char *text = calloc(1, 65536);
    ck_assert_ptr_nonnull(text);
    size_t n = fread(text, 1, 65535, p);
    text[n] = '\0';
    pclose(p);
    return text;
}

/* Every file under dir/sub, relative and sorted, one a line. */
static char *files_under(const char *sub)
{
    return capture("cd '%s/%s' 2>/dev/null && find . -type f | LC_ALL=C sort", dir, sub);
}

static int count_lines(const char *text)
{
    int n = 0;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    return n;
}

/* A number from the {"event": "done"} line of a JSON-progress stderr file. */
static long done_field(const char *stderr_rel, const char *key)
{
    size_t len;
    char *text = (char *)read_all(at("%s", stderr_rel), &len);
    text[len] = '\0';
    char *line = strstr(text, "{\"event\": \"done\"");
    ck_assert_msg(line != NULL, "no done line in %s: %s", stderr_rel, text);
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\": ", key);
    char *field = strstr(line, pattern);
    ck_assert_msg(field != NULL, "no %s in %s", key, line);
    const long v = strtol(field + strlen(pattern), NULL, 10);
    free(text);
    return v;
}

static bool file_has(const char *rel, const char *needle)
{
    size_t len;
    char *text = (char *)read_all(at("%s", rel), &len);
    text[len] = '\0';
    const bool found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* ---- the tree ---- */

/* A fixture image copied into the tree, and the expected values it has. */
typedef struct {
    const char *rel;      /* under in/ */
    const char *source;   /* images/... */
    const char *expected; /* expected/tiny-sd/NAME.safetensors, or NULL (JPEG: lossy) */
} tree_image;

static const tree_image tree[] = {
    {"a/b/img 1.png", "astronaut_64.png", "astronaut_64"},
    {"a/coffee.png", "coffee_64.png", "coffee_64"},
    {"a/b/c/chelsea.png", "chelsea_64.png", "chelsea_64"},
    {"odd/chelsea 60x44.png", "chelsea_60x44.png", "chelsea_60x44"},
    {"coffee_96x128.png", "coffee_96x128.png", "coffee_96x128"},
    {"rocket.png", "rocket_128.png", "rocket_128"},
    {"gray/astronaut gray.png", "astronaut_64_gray.png", "astronaut_64_gray"},
    {"x/y/palette.PNG", "astronaut_64_palette.png", "astronaut_64_palette"},
    {"j/astronaut.jpg", "astronaut_64.jpg", NULL},
};
#define N_TREE (int)(sizeof tree / sizeof tree[0])
static const char *const broken[] = {"bad/truncated.png", "bad/not an image.png", "bad/tiny.png"};
#define N_BROKEN 3

static void copy_file(const char *from, const char *to)
{
    size_t len;
    uint8_t *data = read_all(from, &len);
    write_all(to, data, len);
    free(data);
}

static void make_dirs(const char *path)
{
    char cmd[4600];
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\"", path);
    ck_assert_int_eq(system(cmd), 0);
}

/* A valid 4x4 PNG: too small for an encoder that divides by 8. */
static void write_tiny_png(const char *path)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = 4;
    img.height = 4;
    img.format = PNG_FORMAT_RGB;
    uint8_t pixels[4 * 4 * 3];
    memset(pixels, 128, sizeof pixels);
    ck_assert(png_image_write_to_file(&img, path, 0, pixels, 0, NULL));
}

#ifdef HAVE_LIBWEBP
/* astronaut_64 as lossless WebP: the same pixels, so the same expected values */
static void write_webp(const char *path)
{
    char err[LD_ERR_LEN];
    ld_image rgb;
    ck_assert_msg(ld_image_load_file(fixture("images/astronaut_64.png"), NULL, &rgb, err) == LD_OK,
                  "%s", err);
    uint8_t packed[64 * 64 * 3];
    for (int i = 0; i < 64 * 64; i++)
        for (int c = 0; c < 3; c++)
            packed[i * 3 + c] = (uint8_t)(rgb.rgb[c * 64 * 64 + i] * 255.0f + 0.5f);
    uint8_t *webp = NULL;
    const size_t len = WebPEncodeLosslessRGB(packed, 64, 64, 64 * 3, &webp);
    ck_assert_uint_gt(len, 0);
    write_all(path, webp, len);
    WebPFree(webp);
    ld_image_free(&rgb);
}
#endif

/* dir/in: the images of tree[], the broken files, a WebP when the build reads
 * WebP, and a text file that a folder walk leaves alone. */
static void make_tree(void)
{
    for (int i = 0; i < N_TREE; i++) {
        const char *to = at("in/%s", tree[i].rel);
        make_dirs(to);
        copy_file(fixture("images/%s", tree[i].source), to);
    }
    make_dirs(at("in/bad/x"));
    size_t len;
    uint8_t *png = read_all(fixture("images/coffee_64.png"), &len);
    write_all(at("in/%s", broken[0]), png, len / 2);
    free(png);
    write_all(at("in/%s", broken[1]), "hello\n", 6);
    write_tiny_png(at("in/%s", broken[2]));
    write_all(at("in/notes.txt"), "not an image\n", 13);
#ifdef HAVE_LIBWEBP
    make_dirs(at("in/w/x"));
    write_webp(at("in/w/astronaut.webp"));
#endif
}

static int n_good(void)
{
#ifdef HAVE_LIBWEBP
    return N_TREE + 1;
#else
    return N_TREE;
#endif
}

/* ---- reading outputs ---- */

/* An .npy's float32 data and shape [3] (asserting the header is what it must be). */
static float *read_npy(const char *path, int64_t shape[3])
{
    size_t len;
    uint8_t *b = read_all(path, &len);
    ck_assert_uint_ge(len, 64);
    ck_assert_int_eq(memcmp(b, "\x93NUMPY\x01\x00", 8), 0);
    const size_t data_at = 10 + (size_t)(b[8] | b[9] << 8);
    ck_assert_uint_eq(data_at % 64, 0);
    char dict[512];
    ck_assert_uint_lt(data_at - 10, sizeof dict);
    memcpy(dict, b + 10, data_at - 10);
    dict[data_at - 10] = '\0';
    ck_assert_ptr_nonnull(strstr(dict, "'descr': '<f4', 'fortran_order': False"));
    long long s[3];
    const char *sh = strstr(dict, "'shape': (");
    ck_assert_ptr_nonnull(sh);
    ck_assert_int_eq(sscanf(sh, "'shape': (%lld, %lld, %lld)", &s[0], &s[1], &s[2]), 3);
    const size_t n = (size_t)(s[0] * s[1] * s[2]);
    ck_assert_uint_eq(len - data_at, n * sizeof(float));
    float *data = malloc(n * sizeof(float));
    memcpy(data, b + data_at, n * sizeof(float));
    free(b);
    for (int d = 0; d < 3; d++)
        shape[d] = s[d];
    return data;
}

static void assert_close(const float *got, const char *expected, const char *name, size_t n,
                         const char *what)
{
    size_t n_want;
    float *want = read_tensor(fixture("expected/tiny-sd/%s.safetensors", expected), name,
                              &n_want, NULL);
    ck_assert_uint_eq(n, n_want);
    const double e = rel_error(got, want, n);
    ck_assert_msg(e <= 1e-4, "%s: %s off by %g", what, name, e);
    free(want);
}

/* out/STEM.npy of every tree image holds its moments: mean then logvar,
 * [8, h, w] (tiny-sd's logvar never reaches the clamp). */
static void assert_moments(const char *out)
{
    for (int i = 0; i < N_TREE; i++) {
        char stem[256];
        snprintf(stem, sizeof stem, "%s", tree[i].rel);
        *strrchr(stem, '.') = '\0';
        int64_t shape[3];
        float *m = read_npy(at("%s/%s.npy", out, stem), shape);
        ck_assert_int_eq(shape[0], 2 * CHANNELS);
        const size_t per = (size_t)(CHANNELS * shape[1] * shape[2]);
        if (tree[i].expected) {
            assert_close(m, tree[i].expected, "mean", per, tree[i].rel);
            assert_close(m + per, tree[i].expected, "logvar", per, tree[i].rel);
        }
        free(m);
    }
#ifdef HAVE_LIBWEBP
    int64_t shape[3];
    float *m = read_npy(at("%s/w/astronaut.npy", out), shape);
    assert_close(m, "astronaut_64", "mean", CHANNELS * 8 * 8, "webp");
    free(m);
#endif
}

/* ---- tests ---- */

START_TEST(outputs_equal_the_fixtures)
{
    make_tree();
    ck_assert_int_eq(run("-q --out-dir out --failures failed.tsv in 2>stderr"), 1);
    assert_moments("out");
    /* one line per broken file, with its reason; the text file was not an input */
    char *listed = capture("cut -f1 '%s/failed.tsv' | LC_ALL=C sort", dir);
    ck_assert_str_eq(listed, "in/bad/not an image.png\nin/bad/tiny.png\nin/bad/truncated.png\n");
    free(listed);
    ck_assert(file_has("failed.tsv", "in/bad/tiny.png\t"));
    ck_assert(file_has("failed.tsv", "too small"));
    ck_assert(file_has("stderr", "in/bad/truncated.png: "));
    char *files = files_under("out");
    ck_assert_int_eq(count_lines(files), n_good());
    ck_assert_ptr_null(strstr(files, ".tmp"));
    ck_assert_ptr_null(strstr(files, "notes"));
    free(files);

    /* --outputs latents: [C, h, w] of the scaled latents */
    ck_assert_int_eq(run("-q --out-dir lat --outputs latents --exclude 'bad/*' in"), 0);
    int64_t shape[3];
    float *l = read_npy(at("lat/odd/chelsea 60x44.npy"), shape);
    ck_assert_int_eq(shape[0], CHANNELS);
    ck_assert_int_eq(shape[1], 7);
    ck_assert_int_eq(shape[2], 5);
    assert_close(l, "chelsea_60x44", "latents", CHANNELS * 7 * 5, "latents npy");
    free(l);

    /* safetensors: every tensor named, no batch axis, with the metadata */
    ck_assert_int_eq(run("-q --out-dir st --format safetensors --outputs "
                         "latents,mean,logvar,moments --vae-split 3 --exclude 'bad/*' in"),
                     0);
    static const char *const names[] = {"latents", "mean", "logvar"};
    for (int k = 0; k < 3; k++) {
        size_t n;
        int64_t s4[4];
        float *t = read_tensor(at("st/a/b/img 1.safetensors"), names[k], &n, s4);
        ck_assert_int_eq(s4[0], CHANNELS);
        ck_assert_int_eq(s4[3], 0); /* three dimensions */
        assert_close(t, "astronaut_64", names[k], n, "safetensors");
        free(t);
    }
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_msg(ld_st_open(at("st/rocket.safetensors"), &f, err) == LD_OK, "%s", err);
    ck_assert_int_eq(ld_st_find(f, "moments")->shape[0], 2 * CHANNELS);
    ck_assert_str_eq(ld_st_metadata(f, "model"), "tiny-sd");
    ld_st_close(f);
}
END_TEST

static int64_t mtime_ns(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

START_TEST(rerun_skips_whole_outputs)
{
    make_tree();
    ck_assert_int_eq(run("--progress json --out-dir out in 2>first"), 1);
    ck_assert_int_eq(done_field("first", "encoded"), n_good());
    ck_assert_int_eq(done_field("first", "failed"), N_BROKEN);
    const int64_t before = mtime_ns(at("out/rocket.npy"));

    ck_assert_int_eq(run("--progress json --out-dir out in 2>second"), 1);
    ck_assert_int_eq(done_field("second", "encoded"), 0);
    ck_assert_int_eq(done_field("second", "skipped"), n_good());
    ck_assert_int_eq(done_field("second", "failed"), N_BROKEN); /* still reported */
    ck_assert_int_eq(mtime_ns(at("out/rocket.npy")), before);

    /* an output that is not whole is encoded again: cut short, or a header alone */
    size_t len;
    uint8_t *npy = read_all(at("out/rocket.npy"), &len);
    write_all(at("out/rocket.npy"), npy, len - 4);
    write_all(at("out/a/coffee.npy"), npy, 64);
    ck_assert_int_eq(run("--progress json --out-dir out in 2>third"), 1);
    ck_assert_int_eq(done_field("third", "encoded"), 2);
    size_t len2;
    uint8_t *again = read_all(at("out/rocket.npy"), &len2);
    ck_assert_uint_eq(len2, len);
    ck_assert_mem_eq(again, npy, len);
    free(again);
    free(npy);

    ck_assert_int_eq(run("--progress json --overwrite --exclude 'bad/*' --out-dir out in "
                         "2>fourth"),
                     0);
    ck_assert_int_eq(done_field("fourth", "encoded"), n_good());
    ck_assert_int_eq(done_field("fourth", "total"), n_good());
}
END_TEST

/* The list for a run that blocks half-way: every tree image and a FIFO
 * (in/m-fifo.png) that sorts between in/j/ and in/odd/.  The reader opens
 * the FIFO and waits there until the test writes an image into it, so the
 * run is reliably caught in the middle, whatever the machine's speed. */
static void make_blocking_list(void)
{
    make_tree();
    ck_assert_int_eq(mkfifo(at("in/m-fifo.png"), 0644), 0);
    char *list = capture("cd '%s' && find in -iname '*.png' -o -name '*.jpg' -o -name '*.webp' "
                         "| grep -v '^in/bad/'",
                         dir);
    write_all(at("list.txt"), list, strlen(list));
    free(list);
}

/* Whether the run stopped where the FIFO holds it: what sorts before is
 * written, what sorts after is not. */
static void assert_caught_midway(const char *out)
{
    ck_assert(exists(at("%s/in/a/b/img 1.npy", out)));
    ck_assert(exists(at("%s/in/coffee_96x128.npy", out)));
    ck_assert(exists(at("%s/in/j/astronaut.npy", out)));
    ck_assert(!exists(at("%s/in/odd/chelsea 60x44.npy", out)));
    ck_assert(!exists(at("%s/in/rocket.npy", out)));
    ck_assert(!exists(at("%s/in/x/y/palette.npy", out)));
}

START_TEST(killed_run_resumes_to_the_same_files)
{
    make_blocking_list();
    const pid_t pid = spawn("-q --vae-split 1 --out-dir out @list.txt 2>killed");
    wait_for_file(at("out/in/j/astronaut.npy")); /* the last image before the FIFO */
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(wait_for(pid), 128 + SIGKILL);
    assert_caught_midway("out");
    /* as if the kill had come while a file was being written */
    write_all(at("out/in/rocket.npy.tmp"), "half", 4);

    ck_assert_int_eq(unlink(at("in/m-fifo.png")), 0);
    copy_file(fixture("images/coffee_64.png"), at("in/m-fifo.png"));
    ck_assert_int_eq(run("--progress json --out-dir out @list.txt 2>resumed"), 0);
    /* what sorts before the FIFO: a/ (3), coffee_96x128, gray, j */
    ck_assert_int_eq(done_field("resumed", "skipped"), 6);
    ck_assert_int_eq(run("-q --out-dir whole @list.txt"), 0);

    char *resumed = files_under("out"), *whole = files_under("whole");
    ck_assert_str_eq(resumed, whole);
    ck_assert_ptr_null(strstr(resumed, ".tmp"));
    ck_assert_int_eq(count_lines(resumed), n_good() + 1);
    free(resumed);
    free(whole);
    char *diff = capture("cd '%s' && diff -r out whole && echo same", dir);
    ck_assert_str_eq(diff, "same\n");
    free(diff);
    assert_moments("out/in");
}
END_TEST

START_TEST(sigterm_stops_after_the_batch)
{
    make_blocking_list();
    const pid_t pid = spawn("--progress json --out-dir out @list.txt 2>stopped");
    wait_for_file(at("out/in/j/astronaut.npy"));
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    /* the reader may be waiting in the FIFO's open: give it an image, which
     * the run must not encode past the stop; or it saw the stop first and
     * the program ends without opening the FIFO */
    size_t len;
    uint8_t *png = read_all(fixture("images/coffee_64.png"), &len);
    int status = -1;
    const struct timespec tick = {0, 10000000};
    for (;;) {
        const int fd = open(at("in/m-fifo.png"), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) {
            ck_assert_int_eq(fcntl(fd, F_SETFL, 0), 0);
            ck_assert_int_eq(write(fd, png, len), (ssize_t)len);
            close(fd);
            status = wait_for(pid);
            break;
        }
        ck_assert_int_eq(errno, ENXIO); /* no reader yet */
        int raw;
        const pid_t done = waitpid(pid, &raw, WNOHANG);
        ck_assert_int_ge(done, 0);
        if (done == pid) {
            status = status_of(raw);
            break;
        }
        nanosleep(&tick, NULL);
    }
    free(png);
    ck_assert_int_eq(status, 128 + SIGTERM);
    assert_caught_midway("out");
    ck_assert(!exists(at("out/in/m-fifo.npy")));
    char *tmp = capture("cd '%s' && find . -name '*.tmp'", dir);
    ck_assert_str_eq(tmp, "");
    free(tmp);
    ck_assert(file_has("stopped", "\"status\": \"stopped\""));
    ck_assert(file_has("stopped", "run again to finish"));
}
END_TEST

START_TEST(shards_cover_the_set_exactly_once)
{
    make_tree();
    enum { N = 3 };
    ck_assert_int_eq(run("-q --vae-split 2 --out-dir single in 2>/dev/null"), 1);
    pid_t pids[N];
    for (int i = 0; i < N; i++) /* in parallel, all into one folder */
        pids[i] = spawn("--progress json --vae-split 2 --shard %d/%d --out-dir sharded "
                        "--failures failed%d.tsv in 2>shard%d",
                        i, N, i, i);
    long encoded = 0, total = 0, failed = 0;
    for (int i = 0; i < N; i++) {
        const int status = wait_for(pids[i]);
        char name[16];
        snprintf(name, sizeof name, "shard%d", i);
        encoded += done_field(name, "encoded");
        total += done_field(name, "total");
        failed += done_field(name, "failed");
        ck_assert_int_eq(done_field(name, "skipped"), 0);
        ck_assert_int_eq(status, done_field(name, "failed") ? 1 : 0);
        ck_assert_int_gt(done_field(name, "total"), 0); /* every shard got some */
    }
    ck_assert_int_eq(encoded, n_good()); /* each image once, and no image twice */
    ck_assert_int_eq(failed, N_BROKEN);
    ck_assert_int_eq(total, n_good() + N_BROKEN);
    char *lists = capture("cat '%s'/failed*.tsv | cut -f1 | LC_ALL=C sort | tr '\\n' '|'", dir);
    ck_assert_str_eq(lists, "in/bad/not an image.png|in/bad/tiny.png|in/bad/truncated.png|");
    free(lists);
    char *diff = capture("cd '%s' && diff -r single sharded && echo same", dir);
    ck_assert_str_eq(diff, "same\n");
    free(diff);
}
END_TEST

START_TEST(shard_auto_reads_slurm_and_kubernetes)
{
    make_tree();
    static const char *const clear =
        "env -u SLURM_ARRAY_TASK_ID -u SLURM_ARRAY_TASK_COUNT -u SLURM_ARRAY_TASK_MIN "
        "-u JOB_COMPLETION_INDEX -u LATENTD_SHARD_COUNT";
    char cmd[12288], args[4096];
    /* Slurm: sbatch --array=0-2 gives task 1 of 3 these */
    snprintf(args, sizeof args, "-q --shard auto --out-dir slurm in 2>/dev/null");
    command(cmd, sizeof cmd, args);
    char line[16384];
    snprintf(line, sizeof line, "%s SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=3 sh -c \"%s\"",
             clear, cmd);
    system(line);
    run("-q --shard 1/3 --out-dir explicit1 in 2>/dev/null");
    char *a = files_under("slurm"), *b = files_under("explicit1");
    ck_assert_int_gt(strlen(a), 0);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    /* Kubernetes: an Indexed Job of completions 3, LATENTD_SHARD_COUNT=3 in its spec */
    snprintf(args, sizeof args, "-q --shard auto --out-dir k8s in 2>/dev/null");
    command(cmd, sizeof cmd, args);
    snprintf(line, sizeof line, "%s JOB_COMPLETION_INDEX=2 LATENTD_SHARD_COUNT=3 sh -c \"%s\"",
             clear, cmd);
    system(line);
    run("-q --shard 2/3 --out-dir explicit2 in 2>/dev/null");
    a = files_under("k8s");
    b = files_under("explicit2");
    ck_assert_int_gt(strlen(a), 0);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    /* neither: a clear error, nothing written */
    snprintf(args, sizeof args, "-q --shard auto --out-dir none in 2>auto.err");
    command(cmd, sizeof cmd, args);
    snprintf(line, sizeof line, "%s sh -c \"%s\"", clear, cmd);
    ck_assert_int_eq(status_of(system(line)), 2);
    ck_assert(file_has("auto.err", "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"));
    ck_assert(file_has("auto.err", "JOB_COMPLETION_INDEX and LATENTD_SHARD_COUNT"));
    ck_assert(!exists(at("none")));
    /* an index past the count */
    snprintf(args, sizeof args, "-q --shard auto --out-dir none in 2>auto.err");
    command(cmd, sizeof cmd, args);
    snprintf(line, sizeof line, "%s JOB_COMPLETION_INDEX=3 LATENTD_SHARD_COUNT=3 sh -c \"%s\"",
             clear, cmd);
    ck_assert_int_eq(status_of(system(line)), 2);
    ck_assert(file_has("auto.err", "is not in 0..2"));
}
END_TEST

START_TEST(lists_stdin_and_globs)
{
    make_tree();
    /* paths on stdin and in a list keep their path below the current folder */
    ck_assert_int_eq(run("-q --out-dir out - < /dev/null"), 0);
    ck_assert_int_eq(run("-q --out-dir out - <<'EOF'\nin/rocket.png\n./in/a/coffee.png\nEOF"), 0);
    write_all(at("list.txt"), "in/odd/chelsea 60x44.png\r\n\n", 27);
    ck_assert_int_eq(run("-q --out-dir out @list.txt"), 0);
    char *files = files_under("out");
    ck_assert_str_eq(files, "./in/a/coffee.npy\n./in/odd/chelsea 60x44.npy\n./in/rocket.npy\n");
    free(files);
    /* include and exclude, '*' crossing folders */
    ck_assert_int_eq(run("-q --out-dir globs --include '*.png' --include '*.PNG' "
                         "--exclude 'bad/*' --exclude 'a/*' in"),
                     0);
    files = files_under("globs");
    ck_assert_str_eq(files, "./coffee_96x128.npy\n./gray/astronaut gray.npy\n"
                            "./odd/chelsea 60x44.npy\n./rocket.npy\n./x/y/palette.npy\n");
    free(files);
    /* two inputs of one output, and a path that would climb out */
    copy_file(fixture("images/coffee_64.png"), at("in/rocket.webp"));
    ck_assert_int_eq(run("-q --out-dir clash in 2>clash.err"), 1);
    ck_assert(file_has("clash.err", "would write the same output"));
    ck_assert_int_eq(run("-q --out-dir up ../x.png 2>up.err"), 1);
    ck_assert(file_has("up.err", "outside the output folder"));
    /* usage */
    ck_assert_int_eq(run("-q --out-dir o --format jpeg in 2>/dev/null"), 2);
    ck_assert_int_eq(run("-q --out-dir o --outputs latents,bogus in 2>/dev/null"), 2);
    ck_assert_int_eq(run("-q --out-dir o --sample in 2>/dev/null"), 2);
    ck_assert_int_eq(run("-q --shard 3/3 --out-dir o in 2>/dev/null"), 2);
    ck_assert_int_eq(run("-q -o x.st --overwrite in 2>/dev/null"), 2);
}
END_TEST

static Suite *dataset_suite(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("out-dir");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, outputs_equal_the_fixtures);
    tcase_add_test(tc, rerun_skips_whole_outputs);
    tcase_add_test(tc, killed_run_resumes_to_the_same_files);
    tcase_add_test(tc, sigterm_stops_after_the_batch);
    tcase_add_test(tc, shards_cover_the_set_exactly_once);
    tcase_add_test(tc, shard_auto_reads_slurm_and_kubernetes);
    tcase_add_test(tc, lists_stdin_and_globs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(dataset_suite());
}
