/* latent-encode: images in, latents out.  With -o, one safetensors file
 * for a list of images; with --out-dir, one file per image of a whole
 * dataset (encode-dataset.c).  The daemon's path minus HTTP and the queue. */
#include "cli.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/result.h"
#include "latentd/safetensors.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    ld_image img;
    ld_result res; /* set once its size group is encoded */
} cli_item;

typedef struct {
    bool show;
    int done_before; /* images finished in earlier size groups */
    int total;
} progress_bar;

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: latent-encode -m MODEL [-o OUT.safetensors] [options] IMAGE...\n"
            "       latent-encode -m MODEL --out-dir DIR [options] [dataset options] INPUT...\n"
            "  -m, --model PATH     diffusers VAE folder or single .safetensors checkpoint\n"
            "  -o, --output PATH    one file for all images (default latents.safetensors;\n"
            "                       - for stdout)\n"
            "  --vae-split N        at most N images per forward pass (default: all; 1 with\n"
            "                       --out-dir, where images of one size are batched by N)\n"
            "  --sample             sample the posterior instead of taking its mode\n"
            "  --seed S             sampling seed, 0 to 2^64-1; image K gets the noise of torch's\n"
            "                       CPU generator seeded S+K (default: random); with --out-dir\n"
            "                       required, and an image uses S + a hash of its name\n"
            "  --no-center          do not map [0,1] to [-1,1] before encoding\n"
            "  --moments            also write the raw moments (mean and logvar, unclamped)\n"
            "  --scaling-factor F, --shift-factor F\n"
            "                       scaling for a single-file checkpoint without config.json\n"
            "  --max-memory MB      working-memory limit; batches are split to fit\n"
            "  --threads N          compute threads (default: one per core)\n"
            "  -q, --quiet          no progress display\n"
            "dataset mode (one output file per image, resumable):\n"
            "  INPUT                an image, a folder (walked recursively: *.png *.jpg *.jpeg\n"
            "                       *.webp unless --include), @LIST (paths one a line), or -\n"
            "                       (paths on stdin)\n"
            "  --out-dir DIR        DIR/a/b/img 1.npy for a/b/img 1.png below a folder given\n"
            "  --format F           npy (default: the first of --outputs, [C', h, w] float32)\n"
            "                       or safetensors (every tensor of --outputs)\n"
            "  --outputs LIST       of latents, mean, logvar, moments (default moments: mean\n"
            "                       and logvar before the clamp, [2C, h, w], InvSR's layout)\n"
            "  --include GLOB, --exclude GLOB\n"
            "                       fnmatch patterns on the name below the folder ('*'\n"
            "                       crosses '/'); each may be repeated\n"
            "  --overwrite          encode again even when a whole output exists (default:\n"
            "                       skip those, so a rerun resumes)\n"
            "  --shard I/N | auto   only the inputs whose name hashes to I modulo N; auto\n"
            "                       reads SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or\n"
            "                       JOB_COMPLETION_INDEX/LATENTD_SHARD_COUNT\n"
            "  --progress MODE      bar (default on a terminal), json (one line on stderr\n"
            "                       every --progress-interval seconds, default 5) or none\n"
            "  --failures FILE      write each image that failed: path TAB reason\n"
            "  exit status: 0 all done, 1 some image failed (or an error), 2 usage,\n"
            "  128+signal when SIGINT/SIGTERM stopped it after the current batch\n");
}

static int parse_number(const char *text, double *out)
{
    char *end;
    *out = strtod(text, &end);
    return *text && !*end ? 0 : -1;
}

/* A repeatable option's values, in a growing array of borrowed argv strings. */
static int push_arg(const char ***list, int *n, const char *value)
{
    const char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
    if (!grown)
        return -1;
    grown[(*n)++] = value;
    *list = grown;
    return 0;
}

static int parse_args(int argc, char **argv, cli_args *a)
{
    enum { OPT_SPLIT = 256, OPT_SAMPLE, OPT_SEED, OPT_NO_CENTER, OPT_MOMENTS, OPT_SCALE,
           OPT_SHIFT, OPT_MEM, OPT_THREADS, OPT_OUT_DIR, OPT_FORMAT, OPT_OUTPUTS, OPT_INCLUDE,
           OPT_EXCLUDE, OPT_OVERWRITE, OPT_SHARD, OPT_PROGRESS, OPT_INTERVAL, OPT_FAILURES };
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
        {"out-dir", required_argument, 0, OPT_OUT_DIR},
        {"format", required_argument, 0, OPT_FORMAT},
        {"outputs", required_argument, 0, OPT_OUTPUTS},
        {"include", required_argument, 0, OPT_INCLUDE},
        {"exclude", required_argument, 0, OPT_EXCLUDE},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"shard", required_argument, 0, OPT_SHARD},
        {"progress", required_argument, 0, OPT_PROGRESS},
        {"progress-interval", required_argument, 0, OPT_INTERVAL},
        {"failures", required_argument, 0, OPT_FAILURES},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->output = "latents.safetensors";
    a->center = true;
    a->spec.format = LD_FILE_NPY;
    a->spec.n_kinds = 1;
    a->spec.kinds[0] = LD_KIND_MOMENTS;
    a->progress_interval = 5;
    bool dataset_only = false, output_given = false;
    int c;
    double num;
    char err[LD_ERR_LEN];
    while ((c = getopt_long(argc, argv, "m:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_path = optarg; break;
        case 'o': a->output = optarg; output_given = true; break;
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
            char seed_err[LD_ERR_LEN];
            if (ld_parse_seed(optarg, &a->seed, seed_err) != LD_OK)
                return fprintf(stderr, "latent-encode: --%s\n", seed_err), -1;
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
        case OPT_OUT_DIR: a->out_dir = optarg; break;
        case OPT_FORMAT:
            dataset_only = true;
            if (strcmp(optarg, "npy") == 0)
                a->spec.format = LD_FILE_NPY;
            else if (strcmp(optarg, "safetensors") == 0)
                a->spec.format = LD_FILE_SAFETENSORS;
            else
                return fprintf(stderr, "latent-encode: --format wants npy or safetensors\n"), -1;
            break;
        case OPT_OUTPUTS:
            dataset_only = true;
            if (ld_kinds_parse(optarg, a->spec.kinds, &a->spec.n_kinds, err) != LD_OK)
                return fprintf(stderr, "latent-encode: --outputs: %s\n", err), -1;
            break;
        case OPT_INCLUDE:
        case OPT_EXCLUDE:
            dataset_only = true;
            if (c == OPT_INCLUDE ? push_arg(&a->include, &a->n_include, optarg)
                                 : push_arg(&a->exclude, &a->n_exclude, optarg))
                return fprintf(stderr, "latent-encode: out of memory\n"), -1;
            break;
        case OPT_OVERWRITE: dataset_only = true; a->overwrite = true; break;
        case OPT_SHARD: dataset_only = true; a->shard = optarg; break;
        case OPT_PROGRESS:
            if (strcmp(optarg, "bar") == 0)
                a->progress = PROGRESS_BAR;
            else if (strcmp(optarg, "json") == 0)
                a->progress = PROGRESS_JSON;
            else if (strcmp(optarg, "none") == 0)
                a->progress = PROGRESS_NONE;
            else
                return fprintf(stderr, "latent-encode: --progress wants bar, json or none\n"), -1;
            break;
        case OPT_INTERVAL:
            if (parse_number(optarg, &num) || !(num >= 0.01 && num <= 86400))
                return fprintf(stderr, "latent-encode: --progress-interval wants seconds\n"), -1;
            a->progress_interval = num;
            break;
        case OPT_FAILURES: dataset_only = true; a->failures = optarg; break;
        default: usage(stderr); return -1;
        }
    }
    if (!a->model_path || optind >= argc) {
        usage(stderr);
        return -1;
    }
    if (a->out_dir && output_given)
        return fprintf(stderr, "latent-encode: -o and --out-dir exclude each other\n"), -1;
    if (!a->out_dir && dataset_only)
        return fprintf(stderr, "latent-encode: --format, --outputs, --include, --exclude, "
                               "--overwrite, --shard and --failures go with --out-dir\n"), -1;
    if (a->out_dir && a->sample && !a->has_seed)
        return fprintf(stderr, "latent-encode: --sample with --out-dir needs --seed, so that "
                               "a resumed or sharded run draws the same noise\n"), -1;
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
    const ld_image **images = calloc((size_t)n, sizeof *images);
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    int *index = calloc((size_t)n, sizeof *index);
    ld_result *res = calloc((size_t)n, sizeof *res);
    int rc = LD_OK;
    if (!images || !seeds || !index || !res) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory for a batch of %d images", n);
        goto done;
    }
    for (int i = 0, k = 0; i < a->n_images; i++) {
        if (items[i].img.height != h || items[i].img.width != w)
            continue;
        images[k] = &items[i].img;
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
    rc = ld_encode_results(model, images, n, &opts, res, err);
    bar->done_before += n;
    for (int k = 0; rc == LD_OK && k < n; k++)
        items[index[k]].res = res[k];
done:
    free(images);
    free(seeds);
    free(index);
    free(res);
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

size_t cli_metadata(const ld_model *model, const cli_args *a, ld_st_meta meta[8],
                    char seed_text[32], char split_text[16])
{
    snprintf(seed_text, 32, "%" PRIu64, a->seed);
    snprintf(split_text, 16, "%d", a->vae_split);
    const ld_st_meta all[] = {
        {"format", "pt"},
        {"model", ld_model_name(model)},
        {"model_layout", ld_model_layout(model)},
        {"scaling", ld_model_scaling(model)},
        {"latents", a->sample ? "sample" : "mode"},
        {"seed", a->sample ? seed_text : "none"},
        {"center_input_sample", a->center ? "true" : "false"},
        {"vae_split", a->vae_split ? split_text : "all"},
    };
    memcpy(meta, all, sizeof all);
    return sizeof all / sizeof all[0];
}

/* One set of tensors for all images when they share a size (stacked), else
 * one set per image with names suffixed .K. */
static int write_output(const ld_model *model, const cli_args *a, cli_item *items, char *err)
{
    const int L = ld_model_config(model)->latent_channels;
    const int n = a->n_images, kinds = a->moments ? 4 : 3;
    const bool stacked = all_same_size(items, n);
    const int sets = stacked ? 1 : n, per = stacked ? n : 1;
    const size_t latent = (size_t)L * items[0].res.lh * items[0].res.lw;
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
            const ld_result *r = &items[s].res;
            fill_out(o, labels[s * kinds + k], sizeof labels[0], ld_kind_name((ld_kind)k),
                     stacked ? -1 : s, per, k == LD_KIND_MOMENTS ? 2 * L : L, r->lh, r->lw);
            if (!stacked) {
                o->data = ld_result_tensor(r, (ld_kind)k, NULL);
                continue;
            }
            /* stack the images' slices: kind k's block starts after the earlier kinds */
            float *dst = stack + (size_t)n * latent * k;
            const size_t size = (k == LD_KIND_MOMENTS ? 2 : 1) * latent;
            for (int i = 0; i < n; i++)
                memcpy(dst + i * size, ld_result_tensor(&items[i].res, (ld_kind)k, NULL),
                       size * sizeof(float));
            o->data = dst;
        }
    }
    char seed_text[32], split_text[16];
    ld_st_meta meta[8];
    const size_t n_meta = cli_metadata(model, a, meta, seed_text, split_text);
    rc = ld_st_write(a->output, outs, (size_t)sets * kinds, meta, n_meta, err);
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
        int lh, lw;
        rc = ld_model_latent_size(model, items[i].img.height, items[i].img.width, &lh, &lw,
                                  inner);
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
        if (items[i].res.data)
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
    if (a.out_dir) {
        int status = 1;
        if (ld_model_load(a.model_path, &a.load, &model, err) == LD_OK)
            status = cli_run_dataset(&a, model);
        else
            fprintf(stderr, "latent-encode: %s\n", err);
        ld_model_free(model);
        free(a.include);
        free(a.exclude);
        return status;
    }
    cli_item *items = calloc((size_t)a.n_images, sizeof *items);
    int rc = items ? ld_model_load(a.model_path, &a.load, &model, err)
                   : ld_fail(err, LD_ENOMEM, "out of memory");
    if (rc == LD_OK)
        rc = run(&a, model, items, err);
    for (int i = 0; items && i < a.n_images; i++) {
        ld_image_free(&items[i].img);
        ld_result_free(&items[i].res);
    }
    free(items);
    ld_model_free(model);
    if (rc != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        return 1;
    }
    return 0;
}
