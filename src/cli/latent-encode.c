/* latent-encode: images in, one safetensors file of latents out.
 * The daemon's path minus HTTP and the queue. */
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/safetensors.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *model_path;
    const char *output;
    int vae_split;
    int threads;
    bool sample;
    bool has_seed;
    uint64_t seed;
    bool center;
    bool quiet;
    bool moments;
    size_t max_memory;
    ld_load_opts load;
    char **images;
    int n_images;
} cli_args;

typedef struct {
    ld_image img;
    int lh, lw;
    float *latents, *mean, *logvar, *moments; /* this image's slices of the results */
} cli_item;

typedef struct {
    bool show;
    int done_before; /* images finished in earlier size groups */
    int total;
} progress_bar;

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: latent-encode -m MODEL [-o OUT.safetensors] [--vae-split N]\n"
            "                     [--sample [--seed S]] [--no-center] [--moments] [-q]\n"
            "                     [--scaling-factor F] [--shift-factor F] [--max-memory MB]\n"
            "                     IMAGE...\n"
            "  -m, --model PATH     diffusers VAE folder or single .safetensors checkpoint\n"
            "  -o, --output PATH    output file (default latents.safetensors; - for stdout)\n"
            "  --vae-split N        at most N images per forward pass (default: all)\n"
            "  --sample             sample the posterior instead of taking its mode\n"
            "  --seed S             sampling seed, 0 to 2^64-1; image K gets the noise of torch's\n"
            "                       CPU generator seeded S+K (default: random)\n"
            "  --no-center          do not map [0,1] to [-1,1] before encoding\n"
            "  --moments            also write the raw moments (mean and logvar, unclamped)\n"
            "  --scaling-factor F, --shift-factor F\n"
            "                       scaling for a single-file checkpoint without config.json\n"
            "  --max-memory MB      working-memory limit; batches are split to fit\n"
            "  --threads N          compute threads (default: one per core)\n"
            "  -q, --quiet          no progress bar\n");
}

static int parse_number(const char *text, double *out)
{
    char *end;
    *out = strtod(text, &end);
    return *text && !*end ? 0 : -1;
}

static int parse_args(int argc, char **argv, cli_args *a)
{
    enum { OPT_SPLIT = 256, OPT_SAMPLE, OPT_SEED, OPT_NO_CENTER, OPT_MOMENTS, OPT_SCALE,
           OPT_SHIFT, OPT_MEM, OPT_THREADS };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"output", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},            {"help", no_argument, 0, 'h'},
        {"vae-split", required_argument, 0, OPT_SPLIT},
        {"sample", no_argument, 0, OPT_SAMPLE},    {"seed", required_argument, 0, OPT_SEED},
        {"no-center", no_argument, 0, OPT_NO_CENTER},
        {"moments", no_argument, 0, OPT_MOMENTS},
        {"scaling-factor", required_argument, 0, OPT_SCALE},
        {"shift-factor", required_argument, 0, OPT_SHIFT},
        {"max-memory", required_argument, 0, OPT_MEM},
        {"threads", required_argument, 0, OPT_THREADS},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->output = "latents.safetensors";
    a->center = true;
    int c;
    double num;
    while ((c = getopt_long(argc, argv, "m:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_path = optarg; break;
        case 'o': a->output = optarg; break;
        case 'q': a->quiet = true; break;
        case 'h': usage(stdout); exit(0);
        case OPT_SPLIT:
            if (parse_number(optarg, &num) || num < 1 || num > 1 << 20 || num != (int)num)
                return fprintf(stderr, "latent-encode: --vae-split wants a positive integer\n"), -1;
            a->vae_split = (int)num;
            break;
        case OPT_THREADS:
            if (parse_number(optarg, &num) || num < 1 || num > 1024 || num != (int)num)
                return fprintf(stderr, "latent-encode: --threads wants a positive integer\n"), -1;
            a->threads = (int)num;
            break;
        case OPT_SAMPLE: a->sample = true; break;
        case OPT_SEED: {
            char err[LD_ERR_LEN];
            if (ld_parse_seed(optarg, &a->seed, err) != LD_OK)
                return fprintf(stderr, "latent-encode: --%s\n", err), -1;
            a->has_seed = true;
            break;
        }
        case OPT_NO_CENTER: a->center = false; break;
        case OPT_MOMENTS: a->moments = true; break;
        case OPT_SCALE:
        case OPT_SHIFT:
            if (parse_number(optarg, &num))
                return fprintf(stderr, "latent-encode: %s wants a number\n", argv[optind - 1]), -1;
            if (c == OPT_SCALE) {
                a->load.set_scaling_factor = true;
                a->load.scaling_factor = (float)num;
            } else {
                a->load.set_shift_factor = true;
                a->load.shift_factor = (float)num;
            }
            break;
        case OPT_MEM:
            if (parse_number(optarg, &num) || num < 1)
                return fprintf(stderr, "latent-encode: --max-memory wants megabytes\n"), -1;
            a->max_memory = (size_t)(num * 1048576.0);
            break;
        default: usage(stderr); return -1;
        }
    }
    if (!a->model_path || optind >= argc) {
        usage(stderr);
        return -1;
    }
    a->images = argv + optind;
    a->n_images = argc - optind;
    return 0;
}

static int on_progress(void *ctx, int done, int total)
{
    (void)total;
    const progress_bar *bar = ctx;
    const int width = 40, now = bar->done_before + done;
    const int filled = width * now / bar->total;
    fprintf(stderr, "\r[%.*s%*s] %d/%d images", filled,
            "========================================", width - filled, "", now, bar->total);
    if (now == bar->total)
        fputc('\n', stderr);
    return 0;
}

static uint64_t fresh_seed(void)
{
    uint64_t seed = 0;
    FILE *fp = fopen("/dev/urandom", "rb");
    if (!fp || fread(&seed, sizeof seed, 1, fp) != 1)
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (fp)
        fclose(fp);
    return seed;
}

/* Encode every image of items[] whose size is h×w, as one batch. */
static int encode_group(const ld_model *model, ld_pool *pool, const cli_args *a,
                        cli_item *items, int h, int w, progress_bar *bar, char *err)
{
    int n = 0;
    for (int i = 0; i < a->n_images; i++)
        n += items[i].img.height == h && items[i].img.width == w;
    const size_t image_floats = (size_t)3 * h * w;
    int lh, lw;
    int rc = ld_model_latent_size(model, h, w, &lh, &lw, err);
    if (rc != LD_OK)
        return rc;
    const size_t latent = (size_t)ld_model_config(model)->latent_channels * lh * lw;
    float *batch = ld_alloc_aligned((size_t)n * image_floats, sizeof(float));
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    float *res = ld_alloc_aligned((size_t)n * latent * 5, sizeof(float)); /* 3 + moments 2 */
    int *index = calloc((size_t)n, sizeof *index);
    if (!batch || !seeds || !res || !index) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory for a batch of %d images", n);
        goto done;
    }
    for (int i = 0, k = 0; i < a->n_images; i++) {
        if (items[i].img.height != h || items[i].img.width != w)
            continue;
        memcpy(batch + k * image_floats, items[i].img.rgb, image_floats * sizeof(float));
        seeds[k] = a->seed + (uint64_t)i;
        index[k++] = i;
    }
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.vae_split = a->vae_split;
    opts.pool = pool;
    opts.center_input = a->center;
    opts.deterministic = !a->sample;
    opts.seeds = a->sample ? seeds : NULL;
    opts.max_memory = a->max_memory;
    if (bar->show) {
        opts.progress = on_progress;
        opts.progress_ctx = bar;
    }
    ld_encode_out out = {res, res + n * latent, res + 2 * n * latent, res + 3 * n * latent, 0};
    rc = ld_encode(model, batch, n, h, w, &opts, &out, err);
    bar->done_before += n;
    if (rc != LD_OK)
        goto done;
    for (int k = 0; k < n; k++) {
        cli_item *it = &items[index[k]];
        it->latents = malloc(latent * sizeof(float) * 5);
        if (!it->latents) {
            rc = ld_fail(err, LD_ENOMEM, "out of memory");
            goto done;
        }
        it->mean = it->latents + latent;
        it->logvar = it->mean + latent;
        it->moments = it->logvar + latent;
        memcpy(it->latents, out.latents + k * latent, latent * sizeof(float));
        memcpy(it->mean, out.mean + k * latent, latent * sizeof(float));
        memcpy(it->logvar, out.logvar + k * latent, latent * sizeof(float));
        memcpy(it->moments, out.moments + 2 * k * latent, 2 * latent * sizeof(float));
    }
done:
    ld_free_aligned(batch);
    ld_free_aligned(res);
    free(seeds);
    free(index);
    return rc;
}

static bool all_same_size(const cli_item *items, int n)
{
    for (int i = 1; i < n; i++)
        if (items[i].img.width != items[0].img.width || items[i].img.height != items[0].img.height)
            return false;
    return true;
}

static void fill_out(ld_st_out *o, char *name, size_t name_size, const char *base, int k,
                     int batch, int channels, int lh, int lw)
{
    if (k < 0)
        snprintf(name, name_size, "%s", base);
    else
        snprintf(name, name_size, "%s.%d", base, k);
    o->name = name;
    o->ndim = 4;
    o->shape[0] = batch;
    o->shape[1] = channels;
    o->shape[2] = lh;
    o->shape[3] = lw;
}

/* One set of tensors for all images when they share a size (stacked), else
 * one set per image with names suffixed .K. */
static int write_output(const ld_model *model, const cli_args *a, cli_item *items, char *err)
{
    const int L = ld_model_config(model)->latent_channels;
    const int n = a->n_images, kinds = a->moments ? 4 : 3;
    const bool stacked = all_same_size(items, n);
    const int sets = stacked ? 1 : n, per = stacked ? n : 1;
    const size_t latent = (size_t)L * items[0].lh * items[0].lw;
    static const char *const names[] = {"latents", "mean", "logvar", "moments"};
    ld_st_out *outs = calloc((size_t)sets * kinds, sizeof *outs);
    char(*labels)[32] = calloc((size_t)sets * kinds, sizeof *labels);
    float *stack = stacked ? malloc((size_t)n * latent * 5 * sizeof(float)) : NULL;
    int rc = LD_OK;
    if (!outs || !labels || (stacked && !stack)) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory");
        goto done;
    }
    for (int s = 0; s < sets; s++) {
        for (int k = 0; k < kinds; k++) {
            ld_st_out *o = &outs[s * kinds + k];
            const cli_item *it = &items[s];
            fill_out(o, labels[s * kinds + k], sizeof labels[0], names[k], stacked ? -1 : s, per,
                     k == 3 ? 2 * L : L, it->lh, it->lw);
            const float *src[] = {it->latents, it->mean, it->logvar, it->moments};
            if (!stacked) {
                o->data = src[k];
                continue;
            }
            /* stack the images' slices: kind k's block starts after the earlier kinds */
            float *dst = stack + (size_t)n * latent * (k == 3 ? 3 : k);
            const size_t size = (k == 3 ? 2 : 1) * latent;
            for (int i = 0; i < n; i++) {
                const float *per_item[] = {items[i].latents, items[i].mean, items[i].logvar,
                                           items[i].moments};
                memcpy(dst + i * size, per_item[k], size * sizeof(float));
            }
            o->data = dst;
        }
    }
    char seed_text[32], split_text[16];
    snprintf(seed_text, sizeof seed_text, "%" PRIu64, a->seed);
    snprintf(split_text, sizeof split_text, "%d", a->vae_split);
    const ld_st_meta meta[] = {
        {"format", "pt"},
        {"model", ld_model_name(model)},
        {"model_layout", ld_model_layout(model)},
        {"scaling", ld_model_scaling(model)},
        {"latents", a->sample ? "sample" : "mode"},
        {"seed", a->sample ? seed_text : "none"},
        {"center_input_sample", a->center ? "true" : "false"},
        {"vae_split", a->vae_split ? split_text : "all"},
    };
    rc = ld_st_write(a->output, outs, (size_t)sets * kinds, meta, sizeof meta / sizeof meta[0],
                     err);
done:
    free(outs);
    free(labels);
    free(stack);
    return rc;
}

static int load_images(const ld_model *model, const cli_args *a, cli_item *items, char *err)
{
    for (int i = 0; i < a->n_images; i++) {
        int rc = ld_image_load_file(a->images[i], NULL, &items[i].img, err);
        if (rc != LD_OK)
            return rc;
        char inner[LD_ERR_LEN];
        rc = ld_model_latent_size(model, items[i].img.height, items[i].img.width, &items[i].lh,
                                  &items[i].lw, inner);
        if (rc != LD_OK)
            return ld_fail(err, rc, "%s: %s", a->images[i], inner);
    }
    return LD_OK;
}

static int run(const cli_args *a, ld_model *model, cli_item *items, char *err)
{
    /* the compute threads first, and with them BLAS's buffers: the images and
     * the encoder's working memory then take what is left */
    ld_pool *pool = NULL;
    int rc = ld_pool_new(a->threads, &pool, err);
    if (rc == LD_OK)
        rc = load_images(model, a, items, err);
    progress_bar bar = {.show = !a->quiet && isatty(STDERR_FILENO) && a->n_images > 1,
                        .total = a->n_images};
    for (int i = 0; i < a->n_images && rc == LD_OK; i++) {
        if (items[i].latents)
            continue; /* already encoded with an earlier image of its size */
        rc = encode_group(model, pool, a, items, items[i].img.height, items[i].img.width, &bar,
                          err);
    }
    ld_pool_free(pool);
    if (rc == LD_OK)
        rc = write_output(model, a, items, err);
    return rc;
}

int main(int argc, char **argv)
{
    cli_args a;
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    if (a.sample && !a.has_seed) {
        a.seed = fresh_seed();
        if (!a.quiet)
            fprintf(stderr, "latent-encode: sampling with seed %" PRIu64 "\n", a.seed);
    }
    char err[LD_ERR_LEN] = "";
    ld_model *model = NULL;
    ld_encoder_init();
    cli_item *items = calloc((size_t)a.n_images, sizeof *items);
    int rc = items ? ld_model_load(a.model_path, &a.load, &model, err)
                   : ld_fail(err, LD_ENOMEM, "out of memory");
    if (rc == LD_OK)
        rc = run(&a, model, items, err);
    for (int i = 0; items && i < a.n_images; i++) {
        ld_image_free(&items[i].img);
        free(items[i].latents);
    }
    free(items);
    ld_model_free(model);
    if (rc != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        return 1;
    }
    return 0;
}
