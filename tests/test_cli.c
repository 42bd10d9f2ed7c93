/* latent-encode as a user runs it: real files in, a safetensors file out,
 * compared with the fixtures; errors give a non-zero status and one line. */
#include "latentd/image.h"
#include "latentd/npy.h"
#include "latentd/safetensors.h"
#include "samplefix.h"
#include "testutil.h"

#include <check.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static char *dir;

static void setup(void) { dir = make_temp_dir(); }
static void teardown(void)
{
    remove_temp_dir(dir);
}

/* Run latent-encode with args; returns its exit status; stderr → dir/stderr. */
static int run_cli(const char *args)
{
    const char *build = getenv("LATENTD_BUILDDIR");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s/latent-encode' %s 2>stderr", dir,
             build ? build : ".", args);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void assert_tensor_matches(const char *out, const char *name, const char *expected,
                                  const char *expected_name, int64_t batch, int64_t index)
{
    size_t n_got, n_want;
    int64_t shape[4];
    float *got = read_tensor(out, name, &n_got, shape);
    float *want = read_tensor(expected, expected_name, &n_want, NULL);
    ck_assert_int_eq(shape[0], batch);
    const size_t per = n_got / (size_t)batch;
    ck_assert_uint_eq(per, n_want);
    double e = rel_error(got + per * (size_t)index, want, per);
    ck_assert_msg(e <= 1e-4, "%s[%lld] off by %g", name, (long long)index, e);
    free(got);
    free(want);
}

START_TEST(stacks_same_size_images_in_order)
{
    char args[8192];
    snprintf(args, sizeof args, "-q -m '%s' -o out.safetensors --vae-split 2 --moments '%s' '%s' '%s'",
             fixture("models/tiny-sd"), fixture("images/coffee_64.png"),
             fixture("images/astronaut_64.png"), fixture("images/chelsea_64.png"));
    ck_assert_int_eq(run_cli(args), 0);
    char out[4300];
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    static const char *const order[] = {"coffee_64", "astronaut_64", "chelsea_64"};
    for (int i = 0; i < 3; i++) {
        const char *exp = fixture("expected/tiny-sd/%s.safetensors", order[i]);
        assert_tensor_matches(out, "latents", exp, "latents", 3, i);
        assert_tensor_matches(out, "mean", exp, "mean", 3, i);
        assert_tensor_matches(out, "logvar", exp, "logvar", 3, i);
    }
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_int_eq(ld_st_open(out, &f, err), LD_OK);
    ck_assert_int_eq(ld_st_find(f, "moments")->shape[1], 8);
    ck_assert_str_eq(ld_st_metadata(f, "model"), "tiny-sd");
    ck_assert_str_eq(ld_st_metadata(f, "scaling"), "z * 0.18215");
    ld_st_close(f);
}
END_TEST

START_TEST(mixed_sizes_get_one_set_each)
{
    char args[8192];
    snprintf(args, sizeof args, "-q -m '%s' -o - '%s' '%s' '%s' > out.st",
             fixture("models/tiny-sdxl-meanstd"), fixture("images/chelsea_60x44.png"),
             fixture("images/astronaut_64.png"), fixture("images/coffee_96x128.png"));
    ck_assert_int_eq(run_cli(args), 0);
    char out[4300];
    snprintf(out, sizeof out, "%s/out.st", dir);
    static const char *const order[] = {"chelsea_60x44", "astronaut_64", "coffee_96x128"};
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "latents.%d", i);
        assert_tensor_matches(out, name, fixture("expected/tiny-sdxl-meanstd/%s.safetensors", order[i]),
                              "latents", 1, 0);
    }
}
END_TEST

/* The other output forms, and a tensor file as input: what the daemon
 * renders, through the same library renderer. */
START_TEST(every_output_form_and_tensor_inputs)
{
    char args[8192], path[4300], err[LD_ERR_LEN];
    const char *model = fixture("models/tiny-sd");
    const char *png = fixture("images/astronaut_64.png");
    const char *exp = fixture("expected/tiny-sd/astronaut_64.safetensors");
    /* ComfyUI's .latent, by the extension: the mode, unscaled */
    snprintf(args, sizeof args, "-q -m '%s' -o x.latent --preview p.png '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(path, sizeof path, "%s/x.latent", dir);
    assert_tensor_matches(path, "latent_tensor", exp, "mean", 1, 0);
    ld_st_file *f;
    ck_assert_int_eq(ld_st_open(path, &f, err), LD_OK);
    ck_assert_ptr_nonnull(ld_st_find(f, "latent_format_version_0"));
    ld_st_close(f);
    /* the preview: a PNG at the latents' size */
    ld_image pic;
    snprintf(path, sizeof path, "%s/p.png", dir);
    ck_assert_msg(ld_image_load_file(path, NULL, &pic, err) == LD_OK, "%s", err);
    ck_assert(pic.width == 8 && pic.height == 8);
    ld_image_free(&pic);
    /* InvSR's moments file for one image: [2C, h, w] */
    snprintf(args, sizeof args, "-q -m '%s' -o m.npy --outputs moments '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(path, sizeof path, "%s/m.npy", dir);
    size_t len;
    uint8_t *npy = read_all(path, &len);
    ck_assert_msg(strstr((char *)npy + 10, "'shape': (8, 8, 8)") != NULL, "%.100s", npy + 10);
    free(npy);
    /* the picture's pixels as a float tensor file give the same latents */
    ld_image img;
    ck_assert(ld_image_load_file(png, NULL, &img, err) == LD_OK);
    const int64_t shape[3] = {3, img.height, img.width};
    uint8_t *tensor;
    ck_assert(ld_npy_serialize(img.rgb, 3, shape, &tensor, &len, err) == LD_OK);
    snprintf(path, sizeof path, "%s/pixels.npy", dir);
    write_all(path, tensor, len);
    free(tensor);
    ld_image_free(&img);
    snprintf(args, sizeof args, "-q -m '%s' -o t.safetensors pixels.npy '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    assert_tensor_matches(path, "mean", exp, "mean", 2, 0);
    assert_tensor_matches(path, "mean", exp, "mean", 2, 1);
    /* a format the images cannot take is an error, not a wrong file */
    snprintf(args, sizeof args, "-q -m '%s' --format npy -o y.bin '%s' '%s'", model, png,
             fixture("images/coffee_96x128.png"));
    ck_assert_int_eq(run_cli(args), 1);
}
END_TEST

START_TEST(sampling_with_a_seed_repeats)
{
    char args[8192];
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "-q -m '%s' --sample --seed 5 -o s%d.st '%s'",
                 fixture("models/tiny-noattn"), k, fixture("images/rocket_128.png"));
        ck_assert_int_eq(run_cli(args), 0);
    }
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/s0.st", dir);
    snprintf(b, sizeof b, "%s/s1.st", dir);
    size_t la, lb;
    uint8_t *da = read_all(a, &la), *db = read_all(b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_mem_eq(da, db, la);
    free(da);
    free(db);
}
END_TEST

/* --sample --seed S gives image K the noise of a torch CPU generator seeded
 * S+K: every sample fixture whose seeds run S, S+1, ... as diffusers drew it. */
START_TEST(seeded_samples_match_diffusers)
{
    int count, used = 0;
    sample_fixture *all = sample_fixtures_load(&count);
    for (int f = 0; f < count; f++) {
        const sample_fixture *fx = &all[f];
        if (!sample_fixture_consecutive(fx))
            continue;
        char args[8192];
        int len = snprintf(args, sizeof args, "-q -m '%s' --sample --seed %" PRIu64
                           " --vae-split 2 -o sample.st", fixture("models/%s", fx->model),
                           fx->seeds[0]);
        for (int k = 0; k < fx->n; k++)
            len += snprintf(args + len, sizeof args - (size_t)len, " '%s'",
                            fixture("images/%s.png", fx->images[k]));
        ck_assert_int_eq(run_cli(args), 0);
        char out[4300];
        snprintf(out, sizeof out, "%s/sample.st", dir);
        size_t n;
        float *got = read_tensor(out, "latents", &n, NULL);
        ck_assert_uint_eq(n, fx->per_image * (size_t)fx->n);
        const double e = rel_error(got, fx->latents, n);
        ck_assert_msg(e <= 1e-4, "%s/%s: off by %g", fx->model, fx->name, e);
        free(got);
        used++;
    }
    ck_assert_int_gt(used, 0);
    sample_fixtures_free(all, count);
}
END_TEST

/* The latents of image `index` of a batch written to dir/name. */
static float *latents_row(const char *name, int batch, int index, size_t *per)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t n;
    float *all = read_tensor(path, "latents", &n, NULL);
    *per = n / (size_t)batch;
    float *row = malloc(*per * sizeof(float));
    ck_assert_ptr_nonnull(row);
    memcpy(row, all + *per * (size_t)index, *per * sizeof(float));
    free(all);
    return row;
}

/* Seeds are decimal 0..2^64-1, as the daemon takes them, and S+K wraps:
 * the image after seed 2^64-1 samples with seed 0. */
START_TEST(seeds_are_unsigned_64_bit_and_wrap)
{
    char args[8192];
    snprintf(args, sizeof args, "-q -m '%s' --sample --seed 18446744073709551615 -o wrap.st '%s' '%s'",
             fixture("models/tiny-sd"), fixture("images/astronaut_64.png"),
             fixture("images/chelsea_64.png"));
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(args, sizeof args, "-q -m '%s' --sample --seed 0 -o zero.st '%s'",
             fixture("models/tiny-sd"), fixture("images/chelsea_64.png"));
    ck_assert_int_eq(run_cli(args), 0);
    size_t per_a, per_b;
    float *a = latents_row("wrap.st", 2, 1, &per_a), *b = latents_row("zero.st", 1, 0, &per_b);
    ck_assert_uint_eq(per_a, per_b);
    ck_assert_mem_eq(a, b, per_a * sizeof(float));
    free(a);
    free(b);
    /* no sign, hex, octal, spaces or clamping */
    static const char *const bad[] = {"18446744073709551616", "-1", "+5", "0x10", " 5", "5x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "-q -m '%s' --sample --seed '%s' -o bad.st '%s'",
                 fixture("models/tiny-sd"), bad[i], fixture("images/chelsea_64.png"));
        ck_assert_msg(run_cli(args) == 2, "--seed '%s' was taken", bad[i]);
    }
    /* a leading zero is decimal, not octal: 010 is 10 */
    snprintf(args, sizeof args, "-q -m '%s' --sample --seed 010 -o ten.st '%s'",
             fixture("models/tiny-sd"), fixture("images/chelsea_64.png"));
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(args, sizeof args, "-q -m '%s' --sample --seed 10 -o ten2.st '%s'",
             fixture("models/tiny-sd"), fixture("images/chelsea_64.png"));
    ck_assert_int_eq(run_cli(args), 0);
    a = latents_row("ten.st", 1, 0, &per_a);
    b = latents_row("ten2.st", 1, 0, &per_b);
    ck_assert_mem_eq(a, b, per_a * sizeof(float));
    free(a);
    free(b);
}
END_TEST

START_TEST(errors_exit_nonzero_with_one_line)
{
    char args[8192], line[1024];
    snprintf(args, sizeof args, "-q -m '%s' -o x.st '%s'", fixture("models/tiny-sd"),
             fixture("README.md"));
    ck_assert_int_eq(run_cli(args), 1);
    char path[4300];
    snprintf(path, sizeof path, "%s/stderr", dir);
    FILE *fp = fopen(path, "r");
    ck_assert_ptr_nonnull(fp);
    ck_assert_ptr_nonnull(fgets(line, sizeof line, fp));
    ck_assert_ptr_nonnull(strstr(line, "not a PNG"));
    ck_assert_ptr_null(fgets(line, sizeof line, fp)); /* one line */
    fclose(fp);
    snprintf(args, sizeof args, "-q -m /no/such/model '%s'", fixture("images/coffee_64.png"));
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert_int_eq(run_cli("-q"), 2); /* usage */
    snprintf(args, sizeof args, "-m '%s' --vae-split zero '%s'", fixture("models/tiny-sd"),
             fixture("images/coffee_64.png"));
    ck_assert_int_eq(run_cli(args), 2);
}
END_TEST

/* ---- memory pressure ---- */

#define HANG_SECONDS 60 /* a run that takes longer counts as hung (normal: under a second) */

/* latent-encode on four 256x256 images in one chunk, under an address-space
 * limit of `mib` MiB (what `prlimit --as` sets), in dir with stderr in
 * dir/stderr.  Returns its wait status; SIGALRM means it hung.  OpenBLAS
 * starts no threads of its own here: those map a work buffer each while the
 * library loads, before main, and spin forever when that fails, a stall no
 * code of latentd's could prevent (see src/nn/blas.c). */
static int run_cli_limited(size_t mib)
{
    const char *build = getenv("LATENTD_BUILDDIR");
    char exe[4200], model[4200], image[4200];
    snprintf(exe, sizeof exe, "%s/latent-encode", build ? build : ".");
    snprintf(model, sizeof model, "%s", fixture("models/tiny-sd"));
    snprintf(image, sizeof image, "%s", fixture("images/astronaut_256.png"));
    char *const argv[] = {exe,   "-q",  "-m",  model, "--vae-split", "4", "--threads", "2",
                          "-o",  "limited.st", image, image, image, image, NULL};
    const pid_t test = getpid();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        die_with_parent(test);
        const struct rlimit limit = {(rlim_t)mib << 20, (rlim_t)mib << 20};
        int fd;
        if (chdir(dir) != 0 || (fd = open("stderr", O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 ||
            dup2(fd, STDERR_FILENO) < 0 || setenv("OPENBLAS_NUM_THREADS", "1", 1) != 0 ||
            setrlimit(RLIMIT_AS, &limit) != 0)
            _exit(99);
        alarm(HANG_SECONDS); /* survives exec; its default action ends the process */
        execv(exe, argv);
        _exit(98);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return status;
}

/* Whether path (in the test's folder) is a regular file with ref's bytes. */
static bool holds(const char *name, const uint8_t *ref, size_t ref_len)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    size_t len;
    uint8_t *bytes = read_all(path, &len);
    const bool same = len == ref_len && (len == 0 || memcmp(bytes, ref, len) == 0);
    free(bytes);
    return same;
}

/* A link planted at -o is replaced like a file, never followed (to a
 * device, a FIFO, a stream); only the names of a stream already open
 * (/dev/stdout, /dev/fd/N, /proc/self/fd/N) write to it; a block device is
 * refused. */
START_TEST(links_at_the_output_are_replaced)
{
    char args[8192], path[4300];
    const char *model = fixture("models/tiny-sd");
    const char *png = fixture("images/astronaut_64.png");
    snprintf(args, sizeof args, "-q -m '%s' -o ref.npy '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(path, sizeof path, "%s/ref.npy", dir);
    size_t ref_len;
    uint8_t *ref = read_all(path, &ref_len);
    struct stat st;

    /* a link to a null device of our own: the link is replaced */
    snprintf(path, sizeof path, "%s/null", dir);
    if (mknod(path, S_IFCHR | 0666, makedev(1, 3)) == 0) {
        snprintf(path, sizeof path, "%s/to-null.npy", dir);
        ck_assert_int_eq(symlink("null", path), 0);
        snprintf(args, sizeof args, "-q -m '%s' -o to-null.npy '%s'", model, png);
        ck_assert_int_eq(run_cli(args), 0);
        ck_assert(holds("to-null.npy", ref, ref_len));
        snprintf(path, sizeof path, "%s/null", dir);
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert(S_ISCHR(st.st_mode));
    }
    /* a link to a FIFO with a reader: nothing reaches the reader */
    snprintf(path, sizeof path, "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(path, 0644), 0);
    const int reader = open(path, O_RDONLY | O_NONBLOCK);
    ck_assert_int_ge(reader, 0);
    snprintf(path, sizeof path, "%s/to-fifo.npy", dir);
    ck_assert_int_eq(symlink("fifo", path), 0);
    snprintf(args, sizeof args, "-q -m '%s' -o to-fifo.npy '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    ck_assert(holds("to-fifo.npy", ref, ref_len));
    char byte;
    ck_assert_int_le(read(reader, &byte, 1), 0);
    close(reader);
    /* a link to /proc/self/fd/1 (standard output a pipe): replaced, and the
     * pipe gets nothing */
    snprintf(path, sizeof path, "%s/to-stdout.npy", dir);
    ck_assert_int_eq(symlink("/proc/self/fd/1", path), 0);
    snprintf(args, sizeof args, "-q -m '%s' -o to-stdout.npy '%s' | cat > piped", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    ck_assert(holds("to-stdout.npy", ref, ref_len));
    ck_assert(holds("piped", NULL, 0));

    /* the names of standard output, itself a regular file: written into it */
    static const char *const names[] = {"/proc/self/fd/1", "/dev/fd/1", "/dev/stdout"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(args, sizeof args, "-q -m '%s' -o %s --format npy '%s' > by-name", model,
                 names[i], png);
        ck_assert_int_eq(run_cli(args), 0);
        ck_assert_msg(holds("by-name", ref, ref_len), "-o %s", names[i]);
    }
    ck_assert_int_eq(lstat("/dev/stdout", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));

    /* a block device (a major no driver has: nothing could be written) */
    snprintf(path, sizeof path, "%s/disk", dir);
    if (mknod(path, S_IFBLK | 0600, makedev(240, 0)) == 0) {
        snprintf(args, sizeof args, "-q -m '%s' -o disk '%s'", model, png);
        ck_assert_int_eq(run_cli(args), 1);
        snprintf(path, sizeof path, "%s/stderr", dir);
        size_t len;
        char *text = (char *)read_all(path, &len);
        text[len] = '\0';
        ck_assert_msg(strstr(text, "a block device: not written"), "%s", text);
        free(text);
    }
    free(ref);
}
END_TEST

/* Whatever the limit, latent-encode finishes (halving its chunk when it must)
 * or fails at once with one line: it never stalls.  A bisection between a
 * limit too small to start and one that is no limit crosses every limit at
 * which the encoder's own threads first need memory, so a stall at any of
 * them is found: before the pool mapped OpenBLAS's buffers up front, a run
 * at 64..250 MiB spun forever inside blas_memory_alloc. */
/* -o naming something that is not a regular file: written through as it
 * is, never replaced by a regular file (as root, a rename over /dev/null
 * would replace the system's null device). */
START_TEST(output_to_fifos_devices_and_stdout)
{
    char args[8192], path[4300], got[4300];
    const char *model = fixture("models/tiny-sd");
    const char *png = fixture("images/astronaut_64.png");
    snprintf(args, sizeof args, "-q -m '%s' -o ref.safetensors '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    size_t ref_len;
    uint8_t *ref = read_all(path, &ref_len);

    /* a FIFO, with a reader process on its other end */
    snprintf(path, sizeof path, "%s/out.fifo", dir);
    ck_assert_int_eq(mkfifo(path, 0644), 0);
    char cmd[8800];
    snprintf(cmd, sizeof cmd, "exec cat '%s/out.fifo' > '%s/got.st'", dir, dir);
    const pid_t reader = spawn_shell(cmd, -1);
    snprintf(args, sizeof args, "-q -m '%s' -o out.fifo --format safetensors '%s'", model, png);
    const int status = run_cli(args);
    struct stat st;
    const bool still_fifo = lstat(path, &st) == 0 && S_ISFIFO(st.st_mode);
    if (!still_fifo) /* replaced: the reader would wait for a writer forever */
        kill(reader, SIGKILL);
    ck_assert_msg(still_fifo, "out.fifo is no longer a FIFO");
    ck_assert_int_eq(status, 0);
    ck_assert_int_eq(wait_within(reader, 60), 0);
    snprintf(got, sizeof got, "%s/got.st", dir);
    size_t len;
    uint8_t *bytes = read_all(got, &len);
    ck_assert_uint_eq(len, ref_len);
    ck_assert_mem_eq(bytes, ref, len);
    free(bytes);

    /* a character device: a null device of our own first (root may make
     * one), and only once that stayed a device, the system's */
    snprintf(path, sizeof path, "%s/null", dir);
    if (mknod(path, S_IFCHR | 0666, makedev(1, 3)) == 0) {
        snprintf(args, sizeof args, "-q -m '%s' -o null '%s'", model, png);
        ck_assert_int_eq(run_cli(args), 0);
        ck_assert_int_eq(lstat(path, &st), 0);
        ck_assert(S_ISCHR(st.st_mode));
    }
    snprintf(args, sizeof args, "-q -m '%s' -o /dev/null --format npy '%s'", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    ck_assert_int_eq(stat("/dev/null", &st), 0);
    ck_assert(S_ISCHR(st.st_mode));
    ck_assert(st.st_rdev == makedev(1, 3));

    /* -o -: standard output, here a pipe */
    snprintf(args, sizeof args, "-q -m '%s' -o - '%s' | cat > piped.st", model, png);
    ck_assert_int_eq(run_cli(args), 0);
    snprintf(got, sizeof got, "%s/piped.st", dir);
    bytes = read_all(got, &len);
    ck_assert_uint_eq(len, ref_len);
    ck_assert_mem_eq(bytes, ref, len);
    free(bytes);
    free(ref);
}
END_TEST

START_TEST(memory_pressure_never_hangs)
{
    if (test_quick())
        return; /* valgrind follows the CLI and needs more address space than any limit here */
#ifdef UNDER_ASAN
    return; /* AddressSanitizer reserves terabytes of shadow: no address-space limit fits */
#endif
    size_t fails = 16, works = (size_t)16 << 10; /* MiB */
    int status = run_cli_limited(works);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "latent-encode fails even without a real limit (status %#x)", status);
    char path[4300], why[1024] = "", extra[1024];
    snprintf(path, sizeof path, "%s/stderr", dir);
    while (works - fails > 16) {
        const size_t mib = (fails + works) / 2;
        status = run_cli_limited(mib);
        ck_assert_msg(!(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM),
                      "latent-encode hung under a %zu MiB address-space limit", mib);
        ck_assert_msg(WIFEXITED(status), "latent-encode died of signal %d under %zu MiB",
                      WTERMSIG(status), mib);
        if (WEXITSTATUS(status) == 0) {
            works = mib;
            continue;
        }
        /* a failure near the threshold is latent-encode's own, in one line */
        fails = mib;
        FILE *fp = fopen(path, "r");
        ck_assert_ptr_nonnull(fp);
        ck_assert_ptr_nonnull(fgets(why, sizeof why, fp));
        ck_assert_msg(!fgets(extra, sizeof extra, fp), "more than one line: %s%s", why, extra);
        fclose(fp);
    }
    ck_assert_msg(strstr(why, "latent-encode: ") == why, "last failure: %s", why);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("latent-encode");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, stacks_same_size_images_in_order);
    tcase_add_test(tc, mixed_sizes_get_one_set_each);
    tcase_add_test(tc, every_output_form_and_tensor_inputs);
    tcase_add_test(tc, sampling_with_a_seed_repeats);
    tcase_add_test(tc, seeded_samples_match_diffusers);
    tcase_add_test(tc, seeds_are_unsigned_64_bit_and_wrap);
    tcase_add_test(tc, errors_exit_nonzero_with_one_line);
    tcase_add_test(tc, memory_pressure_never_hangs);
    tcase_add_test(tc, output_to_fifos_devices_and_stdout);
    tcase_add_test(tc, links_at_the_output_are_replaced);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(cli_suite());
}
