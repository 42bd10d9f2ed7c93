/* bench-encode: images/s, per-stage time and peak RSS of the encoder.
 *
 *   bench-encode [--model PATH | --random-sd] [--size N] [--batch N] [--reps N]
 *                [--threads N] [--save-model DIR] [--pipeline N] [--kernel NAME]
 *                [--banding auto|off|on]
 *   bench-encode --kernels [--threads N] [--reps N] [--kernel NAME]
 *
 * --random-sd writes a full-size SD VAE encoder (block_out_channels
 * 128,256,512,512, 2 layers per block, latent 4) with random weights to a
 * temporary folder and loads it like any checkpoint: speed does not depend on
 * the weights' values.  Compare with bench/torch_encoder.py on the same machine.
 *
 * --pipeline N writes N PNG images of --size to a temporary folder and
 * compares the bare encoder (the images decoded beforehand, encoded in
 * batches of --batch) with a dataset run over the folder (ld_dataset_run:
 * listing, decoding on the reader thread, batching, writing one .npy per
 * image), the way `latent-encode --out-dir` works; --reps passes of each,
 * alternating, the best counting.
 *
 * --kernel NAME encodes with that matrix kernel (auto, avx512, avx2, generic,
 * blas) instead of the CPU's best.  --banding chooses how a pass trades
 * time for memory (ld_banding: auto by default; on bands every layer that
 * can be, as a huge image would, to measure what banding costs; not with
 * --pipeline, which measures the default).  --kernels prints the machine's
 * measured FMA peak and the GFLOP/s of each of the encoder's stages under every
 * kernel this CPU has (bench/kernels.c). */
#include "latentd/dataset.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/safetensors.h"

#include "kernels.h"

#include <getopt.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>


typedef struct {
    ld_st_out *outs;
    float **bufs;
    char **names;
    size_t n, cap;
    uint32_t rng;
} tensor_list;

static float uniform(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return (float)((double)*s / 4294967296.0 * 2.0 - 1.0);
}

static void add(tensor_list *l, const char *name, int ndim, const int64_t *shape, float fill,
                float bound)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->outs = realloc(l->outs, l->cap * sizeof *l->outs);
        l->bufs = realloc(l->bufs, l->cap * sizeof *l->bufs);
        l->names = realloc(l->names, l->cap * sizeof *l->names);
        if (!l->outs || !l->bufs || !l->names)
            abort();
    }
    size_t count = 1;
    for (int d = 0; d < ndim; d++)
        count *= (size_t)shape[d];
    float *data = malloc(count * sizeof(float));
    if (!data)
        abort();
    for (size_t i = 0; i < count; i++)
        data[i] = bound > 0 ? bound * uniform(&l->rng) : fill;
    l->names[l->n] = strdup(name);
    l->bufs[l->n] = data;
    l->outs[l->n] = (ld_st_out){l->names[l->n], ndim, {0}, data};
    memcpy(l->outs[l->n].shape, shape, (size_t)ndim * sizeof *shape);
    l->n++;
}

static void add_conv(tensor_list *l, const char *key, int in, int out, int k)
{
    char name[256];
    const float bound = 1.0f / sqrtf((float)(in * k * k)); /* PyTorch's default init */
    int64_t w[4] = {out, in, k, k}, b[1] = {out};
    snprintf(name, sizeof name, "%s.weight", key);
    add(l, name, 4, w, 0, bound);
    snprintf(name, sizeof name, "%s.bias", key);
    add(l, name, 1, b, 0, bound);
}

static void add_norm(tensor_list *l, const char *key, int c)
{
    char name[256];
    int64_t s[1] = {c};
    snprintf(name, sizeof name, "%s.weight", key);
    add(l, name, 1, s, 1.0f, 0);
    snprintf(name, sizeof name, "%s.bias", key);
    add(l, name, 1, s, 0.0f, 0);
}

static void add_resnet(tensor_list *l, const char *key, int in, int out)
{
    char name[256];
    snprintf(name, sizeof name, "%s.norm1", key);
    add_norm(l, name, in);
    snprintf(name, sizeof name, "%s.conv1", key);
    add_conv(l, name, in, out, 3);
    snprintf(name, sizeof name, "%s.norm2", key);
    add_norm(l, name, out);
    snprintf(name, sizeof name, "%s.conv2", key);
    add_conv(l, name, out, out, 3);
    if (in != out) {
        snprintf(name, sizeof name, "%s.conv_shortcut", key);
        add_conv(l, name, in, out, 1);
    }
}

/* The SD 1.x/2.x VAE encoder's tensors, diffusers names. */
static int write_random_sd(const char *dir, char *err)
{
    static const int blocks[4] = {128, 256, 512, 512};
    tensor_list l = {.rng = 12345};
    char name[256];
    add_conv(&l, "encoder.conv_in", 3, 128, 3);
    int in = 128;
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 2; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            add_resnet(&l, name, j ? blocks[i] : in, blocks[i]);
        }
        if (i < 3) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            add_conv(&l, name, blocks[i], blocks[i], 3);
        }
        in = blocks[i];
    }
    add_resnet(&l, "encoder.mid_block.resnets.0", 512, 512);
    add_norm(&l, "encoder.mid_block.attentions.0.group_norm", 512);
    add_conv(&l, "encoder.mid_block.attentions.0.to_q", 512, 512, 1);
    add_conv(&l, "encoder.mid_block.attentions.0.to_k", 512, 512, 1);
    add_conv(&l, "encoder.mid_block.attentions.0.to_v", 512, 512, 1);
    add_conv(&l, "encoder.mid_block.attentions.0.to_out.0", 512, 512, 1);
    add_resnet(&l, "encoder.mid_block.resnets.1", 512, 512);
    add_norm(&l, "encoder.conv_norm_out", 512);
    add_conv(&l, "encoder.conv_out", 512, 8, 3);
    add_conv(&l, "quant_conv", 8, 8, 1);
    char path[4200];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    int rc = ld_st_write(path, l.outs, l.n, NULL, 0, err);
    for (size_t i = 0; i < l.n; i++) {
        free(l.bufs[i]);
        free(l.names[i]);
    }
    free(l.bufs);
    free(l.names);
    free(l.outs);
    if (rc != LD_OK)
        return rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp)
        return ld_fail(err, LD_EIO, "%s: cannot create", path);
    fprintf(fp, "{\"_class_name\": \"AutoencoderKL\", \"block_out_channels\": [128, 256, 512, 512],"
                " \"layers_per_block\": 2, \"latent_channels\": 4, \"norm_num_groups\": 32,"
                " \"scaling_factor\": 0.18215}\n");
    fclose(fp);
    return LD_OK;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* N PNGs of size² in dir: smooth gradients with noise, so they compress
 * and decode like photos rather than like pure noise. */
static int write_images(const char *dir, int n, int size, char *err)
{
    uint8_t *pixels = malloc((size_t)size * size * 3);
    if (!pixels)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    uint32_t s = 7;
    for (int i = 0; i < n; i++) {
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < 3; c++)
                    pixels[((size_t)y * size + x) * 3 + c] =
                        (uint8_t)((x * (c + 1) + y * (3 - c) + i * 40) / 4 % 200 +
                                  (int)(24 * (uniform(&s) + 1)));
        char path[4200];
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        png_image img;
        memset(&img, 0, sizeof img);
        img.version = PNG_IMAGE_VERSION;
        img.width = (png_uint_32)size;
        img.height = (png_uint_32)size;
        img.format = PNG_FORMAT_RGB;
        if (!png_image_write_to_file(&img, path, 0, pixels, 0, NULL)) {
            free(pixels);
            return ld_fail(err, LD_EIO, "%s: %s", path, img.message);
        }
    }
    free(pixels);
    return LD_OK;
}

/* The bare encoder on the n images of `in`, decoded beforehand (not timed),
 * in batches of `batch`: seconds spent encoding. */
static int bare_pass(const ld_model *model, ld_pool *pool, const char *in, int n, int size,
                     int batch, double *seconds, char *err)
{
    const size_t image = (size_t)3 * size * size;
    float *images = ld_alloc_aligned((size_t)batch * image, sizeof(float));
    const int C = ld_model_config(model)->latent_channels;
    float *moments = malloc((size_t)batch * 2 * C * (size / 8) * (size / 8) * sizeof(float));
    int rc = images && moments ? LD_OK : ld_fail(err, LD_ENOMEM, "out of memory");
    *seconds = 0;
    for (int first = 0; rc == LD_OK && first < n; first += batch) {
        const int k = n - first < batch ? n - first : batch;
        for (int i = 0; rc == LD_OK && i < k; i++) {
            char path[4200];
            ld_image img;
            snprintf(path, sizeof path, "%s/img%03d.png", in, first + i);
            rc = ld_image_load_file(path, NULL, &img, err);
            if (rc == LD_OK)
                memcpy(images + (size_t)i * image, img.rgb, image * sizeof(float));
            ld_image_free(&img);
        }
        ld_encode_opts eo;
        ld_encode_opts_init(&eo);
        eo.vae_split = batch;
        eo.pool = pool;
        ld_encode_out o = {NULL, NULL, NULL, moments, 0}; /* what the run writes */
        const double t0 = now();
        if (rc == LD_OK)
            rc = ld_encode(model, images, k, size, size, &eo, &o, err);
        *seconds += now() - t0;
    }
    ld_free_aligned(images);
    free(moments);
    return rc;
}

/* A dataset run over `in` into `out`, all of it timed. */
static int run_pass(const ld_model *model, ld_pool *pool, const char *in, const char *out,
                    int n, int batch, double *seconds, char *err)
{
    ld_input_list inputs = {0};
    ld_dataset_counts counts = {0};
    const double t0 = now();
    int rc = ld_inputs_add(&inputs, in, NULL, err);
    if (rc == LD_OK)
        rc = ld_inputs_finish(&inputs, err);
    ld_dataset_opts opts;
    ld_dataset_opts_init(&opts);
    opts.out_dir = out;
    opts.overwrite = true; /* every pass encodes everything */
    opts.encode.vae_split = batch;
    opts.encode.pool = pool;
    if (rc == LD_OK)
        rc = ld_dataset_run(model, &inputs, &opts, &counts, err);
    *seconds = now() - t0;
    ld_inputs_free(&inputs);
    if (rc == LD_OK && counts.encoded != (size_t)n)
        rc = ld_fail(err, LD_EINVAL, "the run encoded %zu of %d images", counts.encoded, n);
    return rc;
}

/* Images/s of the bare encoder and of a dataset run over the same n images,
 * the two passes alternating `reps` times so that a machine whose load
 * changes slows both alike; the best pass of each counts. */
static int bench_pipeline(const ld_model *model, ld_pool *pool, int n, int size, int batch,
                          int reps, char *err)
{
    char in[] = "/tmp/latentd-bench-in-XXXXXX", out[] = "/tmp/latentd-bench-out-XXXXXX";
    if (!mkdtemp(in) || !mkdtemp(out))
        return ld_fail(err, LD_EIO, "cannot make a temporary folder");
    int rc = write_images(in, n, size, err);
    double bare = INFINITY, run = INFINITY;
    for (int r = 0; rc == LD_OK && r < reps; r++) {
        double tb = INFINITY, tr = INFINITY;
        rc = bare_pass(model, pool, in, n, size, batch, &tb, err);
        if (rc == LD_OK)
            rc = run_pass(model, pool, in, out, n, batch, &tr, err);
        bare = tb < bare ? tb : bare;
        run = tr < run ? tr : run;
        if (rc == LD_OK)
            printf("pass %d       bare %.2f s, dataset run %.2f s\n", r + 1, tb, tr);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", in, out);
    if (system(cmd) != 0)
        fprintf(stderr, "bench-encode: could not remove %s and %s\n", in, out);
    if (rc != LD_OK)
        return rc;
    printf("model        %s\n", ld_model_name(model));
    printf("input        %d PNG images of %dx%d, batches of %d, best of %d passes\n", n, size,
           size, batch, reps);
    printf("bare encoder %.4f images/s (%.2f s; images decoded beforehand)\n", n / bare, bare);
    printf("dataset run  %.4f images/s (%.2f s; list, decode, encode, write .npy)\n", n / run,
           run);
    printf("ratio        %.3f\n", bare / run);
    return LD_OK;
}

/* --banding's word as an ld_banding; non-zero when it is none of them */
static int parse_banding(const char *word, ld_banding *out)
{
    static const struct { const char *name; ld_banding value; } names[] = {
        {"auto", LD_BANDING_AUTO}, {"off", LD_BANDING_OFF}, {"on", LD_BANDING_ON}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(word, names[i].name)) {
            *out = names[i].value;
            return 0;
        }
    return -1;
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *save_dir = NULL;
    int size = 512, batch = 1, reps = 3, threads = 0, random_sd = 0, pipeline = 0, kernels = 0;
    ld_kernel kernel = LD_KERNEL_AUTO;
    ld_banding banding = LD_BANDING_AUTO;
    char err[LD_ERR_LEN];
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"random-sd", no_argument, 0, 'r'},
        {"size", required_argument, 0, 's'},  {"batch", required_argument, 0, 'b'},
        {"reps", required_argument, 0, 'n'},  {"threads", required_argument, 0, 't'},
        {"save-model", required_argument, 0, 'S'}, {"pipeline", required_argument, 0, 'p'},
        {"kernel", required_argument, 0, 'k'},     {"kernels", no_argument, 0, 'K'},
        {"banding", required_argument, 0, 'B'},    {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:rs:b:n:t:", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'r': random_sd = 1; break;
        case 's': size = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'n': reps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'S': save_dir = optarg; break;
        case 'p': pipeline = atoi(optarg); break;
        case 'k':
            if (ld_kernel_parse(optarg, &kernel, err) != LD_OK) {
                fprintf(stderr, "bench-encode: %s\n", err);
                return 2;
            }
            break;
        case 'K': kernels = 1; break;
        case 'B':
            if (parse_banding(optarg, &banding) != 0) {
                fprintf(stderr, "bench-encode: --banding takes auto, off or on\n");
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: bench-encode [--model PATH | --random-sd] [--size N] "
                            "[--batch N] [--reps N] [--threads N] [--save-model DIR] "
                            "[--pipeline N] [--kernel NAME] [--banding auto|off|on] "
                            "[--kernels]\n");
            return 2;
        }
    }
    if (pipeline > 0 && banding != LD_BANDING_AUTO) {
        fprintf(stderr, "bench-encode: --pipeline measures the default banding only\n");
        return 2;
    }
    ld_encoder_init();
    if (kernels)
        return bench_kernels(threads, reps, kernel);
    char dir[] = "/tmp/latentd-bench-XXXXXX";
    if (save_dir) { /* the random model alone, for bench/accuracy.py */
        if (write_random_sd(save_dir, err) != LD_OK) {
            fprintf(stderr, "bench-encode: %s\n", err);
            return 1;
        }
        return 0;
    }
    if (random_sd || !model_path) {
        if (!mkdtemp(dir) || write_random_sd(dir, err) != LD_OK) {
            fprintf(stderr, "bench-encode: %s\n", err);
            return 1;
        }
        model_path = dir;
    }
    ld_model *model;
    if (ld_model_load(model_path, NULL, &model, err) != LD_OK) {
        fprintf(stderr, "bench-encode: %s\n", err);
        return 1;
    }
    if (model_path == dir) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench-encode: could not remove %s\n", dir);
    }
    int lh, lw;
    if (ld_model_latent_size(model, size, size, &lh, &lw, err) != LD_OK) {
        fprintf(stderr, "bench-encode: %s\n", err);
        return 1;
    }
    const size_t pixels = (size_t)batch * 3 * size * size;
    const size_t latent = (size_t)batch * ld_model_config(model)->latent_channels * lh * lw;
    float *images = malloc(pixels * sizeof(float)), *latents = malloc(latent * sizeof(float));
    uint32_t s = 99;
    for (size_t i = 0; i < pixels; i++)
        images[i] = 0.5f + 0.5f * uniform(&s);
    ld_pool *pool;
    if (ld_pool_new(threads, &pool, err) != LD_OK ||
        ld_pool_set_kernel(pool, kernel, err) != LD_OK) {
        fprintf(stderr, "bench-encode: %s\n", err);
        return 1;
    }
    ld_encode_opts eo;
    ld_encode_opts_init(&eo);
    eo.vae_split = batch;
    eo.pool = pool; /* made once, as a daemon's worker does */
    eo.banding = banding;
    if (pipeline > 0) {
        /* warm up like the plain mode, then time both paths */
        ld_encode_out warm = {latents, NULL, NULL, NULL, 0};
        int rc = ld_encode(model, images, batch, size, size, &eo, &warm, err);
        if (rc == LD_OK)
            rc = bench_pipeline(model, pool, pipeline, size, batch, reps, err);
        free(images);
        free(latents);
        ld_pool_free(pool);
        ld_model_free(model);
        if (rc != LD_OK) {
            fprintf(stderr, "bench-encode: %s\n", err);
            return 1;
        }
        return 0;
    }
    ld_encode_out out = {latents, NULL, NULL, NULL, 0};
    if (ld_encode(model, images, batch, size, size, &eo, &out, err) != LD_OK) { /* warm-up */
        fprintf(stderr, "bench-encode: %s\n", err);
        return 1;
    }
    ld_encode_stats stats = {0};
    eo.stats = &stats;
    double best = INFINITY, total = 0;
    struct rusage before;
    getrusage(RUSAGE_SELF, &before);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        ld_encode(model, images, batch, size, size, &eo, &out, err);
        double t = now() - t0;
        total += t;
        if (t < best)
            best = t;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* CPU seconds per pass over all threads: with --threads 1 this is what a
     * pass takes on an idle machine, however busy this one is */
    const double cpu = (double)(ru.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                       (ru.ru_utime.tv_usec - before.ru_utime.tv_usec) * 1e-6 +
                       (double)(ru.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                       (ru.ru_stime.tv_usec - before.ru_stime.tv_usec) * 1e-6;
    printf("model        %s\n", ld_model_name(model));
    printf("kernel       %s\n", ld_kernel_name(ld_pool_kernel(pool)));
    printf("input        %d x %dx%d, %d reps\n", batch, size, size, reps);
    printf("images/s     %.4f (best pass %.3f s, mean %.3f s)\n", batch / best, best, total / reps);
    printf("cpu time     %.3f s per pass, all threads (images per CPU-second %.4f)\n",
           cpu / reps, batch * reps / cpu);
    printf("per stage    conv %.3f s, norm %.3f s, attention %.3f s, other %.3f s (per pass)\n",
           stats.conv / reps, stats.norm / reps, stats.attention / reps, stats.other / reps);
    printf("banded       %ld layers of each image per pass (--banding %s)\n",
           stats.banded_layers / reps / batch,
           banding == LD_BANDING_ON ? "on" : banding == LD_BANDING_OFF ? "off" : "auto");
    printf("workspace    %.1f MiB for a pass of %d (banding auto)\n",
           ld_encode_workspace_bytes(model, batch, size, size, ld_pool_threads(pool)) / 1048576.0,
           batch);
    printf("peak RSS     %.1f MiB\n", ru.ru_maxrss / 1024.0);
    free(images);
    free(latents);
    ld_pool_free(pool);
    ld_model_free(model);
    return 0;
}
