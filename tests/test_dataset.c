/* latent-encode --out-dir on a generated tree of images (mixed sizes, nested
 * folders, names with spaces, broken files), run as a user runs it: outputs
 * against the fixtures' expected values, reruns that skip, a run killed or
 * stopped mid-way that resumes to the same files, shards that split the set
 * exactly, --shard auto from Slurm's and Kubernetes' variables, failures;
 * and a shared output folder someone else writes to: planted links, a second
 * run of one shard, FIFOs and devices as inputs and outputs. */
#include "latentd/image.h"
#include "latentd/result.h"
#include "latentd/safetensors.h"
#include "testutil.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <png.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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

/* The list for a run that blocks half-way: every tree image and
 * in/m-big.png (rocket_128 again), which sorts between in/j/ and in/odd/.
 * Its output, out/in/m-big.npy, is a FIFO the test reads from with room for
 * less than the file: the run writes the file through it (a FIFO is never
 * replaced) and waits in that write until the test reads, so it is caught in
 * the middle whatever the machine's speed.  Returns the FIFO's read end. */
static int make_blocking_list(void)
{
    make_tree();
    copy_file(fixture("images/rocket_128.png"), at("in/m-big.png"));
    char *list = capture("cd '%s' && find in -iname '*.png' -o -name '*.jpg' -o -name '*.webp' "
                         "| grep -v '^in/bad/'",
                         dir);
    write_all(at("list.txt"), list, strlen(list));
    free(list);
    make_dirs(at("out/in/m-big.npy"));
    ck_assert_int_eq(mkfifo(at("out/in/m-big.npy"), 0644), 0);
    /* non-blocking: there is no writer yet; poll() waits for its first bytes */
    const int fd = open(at("out/in/m-big.npy"), O_RDONLY | O_NONBLOCK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fcntl(fd, F_SETPIPE_SZ, 4096), 4096); /* the npy is 8 KiB and more */
    return fd;
}

/* Until the run has started writing into the FIFO: it is then blocked there
 * (a deadline only so that a bug fails instead of hanging). */
static void wait_for_writer(int fd)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, (int)(120000 * test_time_scale()));
    ck_assert_msg(ready == 1 && (pfd.revents & POLLIN), "the run never wrote into the FIFO");
}

/* Everything that comes through the FIFO until its writer closes it. */
static uint8_t *drain(int fd, size_t *len)
{
    ck_assert_int_eq(fcntl(fd, F_SETFL, 0), 0);
    size_t cap = 1 << 16, used = 0;
    uint8_t *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    for (ssize_t got; (got = read(fd, buf + used, cap - used)) != 0;) {
        ck_assert_int_gt(got, 0);
        used += (size_t)got;
        ck_assert_uint_lt(used, cap);
    }
    *len = used;
    return buf;
}

static bool is_fifo(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISFIFO(st.st_mode);
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
    const int fifo = make_blocking_list();
    const pid_t pid = spawn("-q --vae-split 1 --out-dir out @list.txt 2>killed");
    wait_for_writer(fifo);
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(wait_for(pid), 128 + SIGKILL);
    close(fifo);
    assert_caught_midway("out");
    ck_assert_int_eq(unlink(at("out/in/m-big.npy")), 0); /* now a file is written there */
    /* as if a kill had come while a file was being written: its temporary
     * file stays (no run removes a file it did not make), and is no output */
    write_all(at("out/in/.rocket.npy.99999-0.tmp"), "half", 4);

    ck_assert_int_eq(run("--progress json --out-dir out @list.txt 2>resumed"), 0);
    /* what sorts before the FIFO: a/ (3), coffee_96x128, gray, j */
    ck_assert_int_eq(done_field("resumed", "skipped"), 6);
    ck_assert(file_has("out/in/.rocket.npy.99999-0.tmp", "half"));
    ck_assert_int_eq(unlink(at("out/in/.rocket.npy.99999-0.tmp")), 0);
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
    const int fifo = make_blocking_list();
    const pid_t pid = spawn("--progress json --out-dir out @list.txt 2>stopped");
    wait_for_writer(fifo);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    /* the write it is in goes on: the whole file comes through, then it stops */
    size_t len;
    uint8_t *npy = drain(fifo, &len);
    close(fifo);
    ck_assert_int_eq(wait_for(pid), 128 + SIGTERM);
    ck_assert_uint_eq(len, 128 + 2 * CHANNELS * 16 * 16 * sizeof(float));
    ck_assert_int_eq(memcmp(npy, "\x93NUMPY", 6), 0);
    free(npy);
    ck_assert(is_fifo(at("out/in/m-big.npy")));
    assert_caught_midway("out");
    char *tmp = capture("cd '%s' && find . -name '*.tmp'", dir);
    ck_assert_str_eq(tmp, "");
    free(tmp);
    ck_assert(file_has("stopped", "\"status\": \"stopped\""));
    ck_assert(file_has("stopped", "run again to finish"));
}
END_TEST

START_TEST(sigterm_ends_a_blocked_run_within_seconds)
{
    const int fifo = make_blocking_list();
    const pid_t pid = spawn("--progress json --out-dir out @list.txt 2>stopped");
    wait_for_writer(fifo);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    /* nobody reads: the write can never finish, and the signal still ends it */
    ck_assert_int_eq(wait_within(pid, 30), 128 + SIGTERM);
    close(fifo);
    ck_assert(is_fifo(at("out/in/m-big.npy")));
    assert_caught_midway("out");
    char *tmp = capture("cd '%s' && find . -name '*.tmp'", dir);
    ck_assert_str_eq(tmp, "");
    free(tmp);
}
END_TEST

START_TEST(fifos_devices_and_huge_files_are_failures)
{
    make_tree();
    ck_assert_int_eq(mkfifo(at("in/pipe.png"), 0644), 0);
    const char *list = "in/rocket.png\nin/pipe.png\n/dev/zero\n";
    write_all(at("list.txt"), list, strlen(list));
    char cmd[12288];
    command(cmd, sizeof cmd, "-q --out-dir out --failures failed.tsv @list.txt 2>list.err");
    ck_assert_int_eq(wait_within(spawn_shell(cmd, -1), 60), 1);
    ck_assert(file_has("failed.tsv", "in/pipe.png\ta FIFO, not a regular file"));
    ck_assert(file_has("failed.tsv", "/dev/zero\ta character device, not a regular file"));
    ck_assert(exists(at("out/in/rocket.npy")));
    ck_assert(is_fifo(at("in/pipe.png")));

    /* named on the command line (a folder walk takes regular files only) */
    command(cmd, sizeof cmd, "-q --out-dir args in/pipe.png /dev/zero in/a/coffee.png 2>args.err");
    ck_assert_int_eq(wait_within(spawn_shell(cmd, -1), 60), 1);
    ck_assert(file_has("args.err", "in/pipe.png: a FIFO"));
    ck_assert(file_has("args.err", "/dev/zero: a character device"));
    ck_assert(exists(at("args/in/a/coffee.npy")));
    /* and with -o */
    command(cmd, sizeof cmd, "-q -o one.safetensors in/pipe.png 2>one.err");
    ck_assert_int_eq(wait_within(spawn_shell(cmd, -1), 60), 1);
    ck_assert(file_has("one.err", "a FIFO, not a regular file"));
    command(cmd, sizeof cmd, "-q -o one.safetensors /dev/zero 2>zero.err");
    ck_assert_int_eq(wait_within(spawn_shell(cmd, -1), 60), 1);
    ck_assert(file_has("zero.err", "a character device, not a regular file"));
    ck_assert(!exists(at("one.safetensors")));

    /* over the size limit: refused before it is read */
    static uint8_t big[(1 << 20) + 1];
    write_all(at("in/big.png"), big, sizeof big);
    ck_assert_int_eq(run("-q --max-input-size 1 --out-dir lim --failures lim.tsv in/big.png "
                         "in/rocket.png 2>/dev/null"),
                     1);
    ck_assert(file_has("lim.tsv", "in/big.png\t1048577 bytes, over the limit of 1048576"));
    ck_assert(exists(at("lim/in/rocket.npy")));
    ck_assert_int_eq(run("-q --max-input-size 2 --out-dir lim2 --failures lim2.tsv in/big.png "
                         "2>/dev/null"),
                     1);
    ck_assert(file_has("lim2.tsv", "not a PNG")); /* read, then found not to be an image */
}
END_TEST

/* Something not a file planted at one output name fails that image only:
 * the run writes the others, and a FIFO nobody reads never hangs it. */
START_TEST(a_bad_output_name_fails_only_its_image)
{
    make_tree();
    make_dirs(at("out/in/a/x"));
    ck_assert_int_eq(mkdir(at("out/in/rocket.npy"), 0755), 0);
    ck_assert_int_eq(mkfifo(at("out/in/a/coffee.npy"), 0644), 0);
    char cmd[12288];
    command(cmd, sizeof cmd,
            "-q --out-dir out --failures failed.tsv in/rocket.png in/a/coffee.png "
            "in/coffee_96x128.png 2>stderr");
    ck_assert_int_eq(wait_within(spawn_shell(cmd, -1), 60), 1);
    char *listed = capture("cut -f1 '%s/failed.tsv' | LC_ALL=C sort", dir);
    ck_assert_str_eq(listed, "in/a/coffee.png\nin/rocket.png\n");
    free(listed);
    ck_assert(file_has("failed.tsv", "a FIFO with no reader"));
    ck_assert(exists(at("out/in/coffee_96x128.npy")));
    ck_assert(is_fifo(at("out/in/a/coffee.npy")));
    struct stat st;
    ck_assert_int_eq(lstat(at("out/in/rocket.npy"), &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    char *tmp = capture("cd '%s' && find . -name '*.tmp'", dir);
    ck_assert_str_eq(tmp, "");
    free(tmp);
}
END_TEST

static long max_rss_kib(void)
{
    struct rusage ru;
    ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_maxrss;
}

/* The skip check of a safetensors output reads its header only: a 1 GiB
 * output (sparse here) is checked without 1 GiB of memory, and one cut
 * short by a byte is still found. */
START_TEST(skip_check_reads_only_the_header)
{
    static const char json[] =
        "{\"latents\":{\"dtype\":\"F32\",\"shape\":[4,16384,4096],"
        "\"data_offsets\":[0,1073741824]}}";
    const uint64_t n = sizeof json - 1;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(n >> (8 * i));
    const char *path = at("big.safetensors");
    const int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, le, 8), 8);
    ck_assert_int_eq(write(fd, json, n), (ssize_t)n);
    const off_t whole = (off_t)(8 + n + ((uint64_t)1 << 30));
    ck_assert_int_eq(ftruncate(fd, whole), 0);
    ck_assert_int_eq(close(fd), 0);

    const ld_output_spec spec = {.format = LD_FILE_SAFETENSORS, .n_kinds = 1,
                                 .kinds = {LD_KIND_LATENTS}};
    char err[LD_ERR_LEN];
    const long before = max_rss_kib();
    ck_assert_msg(ld_output_check(path, &spec, 4, err) == LD_OK, "%s", err);
    ck_assert_int_lt(max_rss_kib() - before, 256 * 1024);
    ck_assert_int_eq(truncate(path, whole - 1), 0);
    ck_assert_int_ne(ld_output_check(path, &spec, 4, err), LD_OK);
    ck_assert_msg(strstr(err, "outside"), "%s", err);
}
END_TEST

/* --failures that cannot be written (a full device) is said and makes the
 * status non-zero; /dev/fd/2 names the stream the shell opened; an empty
 * --out-dir is refused before anything is read. */
START_TEST(failures_list_errors_and_stream_names)
{
    make_tree();
    if (mknod(at("full"), S_IFCHR | 0666, makedev(1, 7)) == 0) { /* a /dev/full of our own */
        ck_assert_int_eq(run("-q --out-dir out --failures full in/bad 2>full.err"), 1);
        ck_assert(file_has("full.err", "full: cannot write the list of failures"));
        struct stat st;
        ck_assert_int_eq(lstat(at("full"), &st), 0);
        ck_assert(S_ISCHR(st.st_mode));
    }
    /* (not /dev/stderr: a build without the fix would rename over it) */
    ck_assert_int_eq(run("-q --out-dir out --failures /dev/fd/2 in/bad 2>listed"), 1);
    ck_assert(file_has("listed", "in/bad/tiny.png\t"));

    ck_assert_int_eq(run("-q --out-dir '' in/bad 2>empty.err"), 2);
    ck_assert(file_has("empty.err", "--out-dir: an empty folder name"));
}
END_TEST

/* A --failures field back to its text: \\ \t \n \r \xNN. */
static char *unescape(const char *field, size_t n)
{
    char *out = calloc(1, n + 1);
    ck_assert_ptr_nonnull(out);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg((unsigned char)field[i] >= 0x20, "a raw control byte in a field");
        if (field[i] != '\\') {
            out[k++] = field[i];
            continue;
        }
        const char c = field[++i];
        if (c == 'x') {
            unsigned v;
            ck_assert_int_eq(sscanf(field + i + 1, "%2x", &v), 1);
            out[k++] = (char)v;
            i += 2;
        } else {
            ck_assert_ptr_nonnull(strchr("\\tnr", c));
            out[k++] = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : '\\';
        }
    }
    return out;
}

START_TEST(failures_escape_names)
{
    static const char *const names[] = {"in/back\\slash.png", "in/new\nline.png",
                                        "in/tab\there.png", "in/x\x01y.png"};
    make_dirs(at("in/x"));
    for (int i = 0; i < 4; i++)
        write_all(at("%s", names[i]), "hello\n", 6);
    ck_assert_int_eq(run("-q --out-dir out --failures failed.tsv in 2>/dev/null"), 1);
    size_t len;
    char *text = (char *)read_all(at("failed.tsv"), &len);
    text[len] = '\0';
    /* one line per failure, in the run's order; one tab in each */
    int line = 0;
    for (char *p = text, *end; *p; p = end + 1, line++) {
        end = strchr(p, '\n');
        ck_assert_ptr_nonnull(end);
        char *tab = memchr(p, '\t', (size_t)(end - p));
        ck_assert_ptr_nonnull(tab);
        ck_assert_ptr_null(memchr(tab + 1, '\t', (size_t)(end - tab - 1)));
        ck_assert_int_lt(line, 4);
        char *path = unescape(p, (size_t)(tab - p));
        ck_assert_str_eq(path, names[line]);
        free(path);
        ck_assert(strstr(tab, "not a PNG") && strstr(tab, "not a PNG") < end);
    }
    ck_assert_int_eq(line, 4);
    ck_assert_ptr_nonnull(strstr(text, "in/back\\\\slash.png\t"));
    ck_assert_ptr_nonnull(strstr(text, "in/new\\nline.png\t"));
    ck_assert_ptr_nonnull(strstr(text, "in/tab\\there.png\t"));
    ck_assert_ptr_nonnull(strstr(text, "in/x\\x01y.png\t"));
    free(text);
}
END_TEST

/* How many temporary names per output the planted-link test takes: more
 * than the run tries for its outputs together. */
#define PLANTED 64

START_TEST(planted_links_are_never_followed)
{
    make_dirs(at("in/sub/x"));
    copy_file(fixture("images/coffee_64.png"), at("in/a.png"));
    copy_file(fixture("images/astronaut_64.png"), at("in/sub/b.png"));
    copy_file(fixture("images/chelsea_64.png"), at("in/c.png"));
    make_dirs(at("victim/x"));
    write_all(at("victim/file"), "precious\n", 9);
    make_dirs(at("out/x"));
    /* a link at the output's old fixed temporary name, at the output itself,
     * and a subfolder that leads outside the output folder */
    ck_assert_int_eq(symlink(at("victim/file"), at("out/a.npy.tmp")), 0);
    ck_assert_int_eq(symlink(at("victim/file"), at("out/c.npy")), 0);
    ck_assert_int_eq(symlink(at("victim"), at("out/sub")), 0);
    int gate[2];
    ck_assert_int_eq(pipe2(gate, O_CLOEXEC), 0);
    char cmd[12288];
    command(cmd, sizeof cmd, "-q --out-dir out --failures failed.tsv in 2>stderr");
    const pid_t pid = spawn_shell(cmd, gate[0]);
    close(gate[0]);
    /* and at every temporary name the run tries first: .NAME.PID-N.tmp */
    for (int n = 0; n < PLANTED; n++) {
        ck_assert_int_eq(symlink(at("victim/file"), at("out/.a.npy.%d-%d.tmp", (int)pid, n)), 0);
        ck_assert_int_eq(symlink(at("victim/file"), at("out/.c.npy.%d-%d.tmp", (int)pid, n)), 0);
    }
    ck_assert_int_eq(write(gate[1], "go", 1), 1);
    close(gate[1]);
    ck_assert_int_eq(wait_within(pid, 120), 1); /* sub/b.png failed */

    ck_assert(file_has("victim/file", "precious\n"));
    size_t len;
    free(read_all(at("victim/file"), &len));
    ck_assert_uint_eq(len, 9);
    int count;
    char **names = dir_entries(at("victim"), &count);
    ck_assert_int_eq(count, 1); /* the file alone: nothing written outside out/ */
    dir_entries_free(names, count);
    struct stat st;
    ck_assert_int_eq(lstat(at("out/a.npy"), &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq(lstat(at("out/c.npy"), &st), 0); /* the link replaced, not followed */
    ck_assert(S_ISREG(st.st_mode));
    int64_t shape[3];
    free(read_npy(at("out/a.npy"), shape));
    free(read_npy(at("out/c.npy"), shape));
    ck_assert(file_has("failed.tsv", "in/sub/b.png\t"));
    ck_assert(file_has("failed.tsv", "symbolic link is not followed"));
    ck_assert_int_eq(lstat(at("out/.a.npy.%d-0.tmp", (int)pid), &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
}
END_TEST

/* A w×h PNG of one gray level. */
static void write_png(const char *path, int w, int h, int level)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_RGB;
    uint8_t *pixels = malloc((size_t)w * h * 3);
    ck_assert_ptr_nonnull(pixels);
    memset(pixels, level, (size_t)w * h * 3);
    ck_assert(png_image_write_to_file(&img, path, 0, pixels, 0, NULL));
    free(pixels);
}

START_TEST(one_shard_twice_at_once)
{
    /* many small images, so that the two runs write the same names at once */
    enum { N = 300, RUNS = 2 };
    make_dirs(at("in/x"));
    for (int i = 0; i < N; i++)
        write_png(at("in/img%03d.png", i), 16, 16, i % 251);
    for (int round = 0; round < 2; round++) {
        int gate[2];
        ck_assert_int_eq(pipe2(gate, O_CLOEXEC), 0);
        pid_t pids[RUNS];
        for (int r = 0; r < RUNS; r++) {
            char cmd[12288], args[256];
            snprintf(args, sizeof args, "--progress json %s --shard 0/1 --out-dir out in 2>run%d",
                     round ? "--overwrite" : "", r);
            command(cmd, sizeof cmd, args);
            pids[r] = spawn_shell(cmd, gate[0]);
        }
        close(gate[0]);
        ck_assert_int_eq(write(gate[1], "go", RUNS), RUNS); /* one byte each: both start now */
        close(gate[1]);
        for (int r = 0; r < RUNS; r++) {
            ck_assert_int_eq(wait_within(pids[r], 300), 0);
            char name[16];
            snprintf(name, sizeof name, "run%d", r);
            ck_assert_int_eq(done_field(name, "encoded") + done_field(name, "skipped"), N);
        }
        for (int i = 0; i < N; i++) {
            int64_t shape[3];
            free(read_npy(at("out/img%03d.npy", i), shape));
            ck_assert_int_eq(shape[0], 2 * CHANNELS);
        }
        char *files = files_under("out");
        ck_assert_int_eq(count_lines(files), N);
        ck_assert_ptr_null(strstr(files, ".tmp"));
        free(files);
    }
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
    tcase_add_test(tc, sigterm_ends_a_blocked_run_within_seconds);
    tcase_add_test(tc, fifos_devices_and_huge_files_are_failures);
    tcase_add_test(tc, a_bad_output_name_fails_only_its_image);
    tcase_add_test(tc, skip_check_reads_only_the_header);
    tcase_add_test(tc, failures_list_errors_and_stream_names);
    tcase_add_test(tc, failures_escape_names);
    tcase_add_test(tc, planted_links_are_never_followed);
    tcase_add_test(tc, one_shard_twice_at_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(dataset_suite());
}
