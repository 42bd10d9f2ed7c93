/* latent-encode: images in, latents out.  With -o, one file for a list of
 * images, in any of the daemon's formats (the library's renderer,
 * latentd/output.h, makes both); with --out-dir, one file per image of a
 * whole dataset (encode-dataset.c).  The daemon's path minus HTTP and the
 * queue. */
#include "cli.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/result.h"
#include "latentd/safefile.h"
#include "latentd/safetensors.h"
#include "latentd/tensor_input.h"

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

/* The images of the one-file mode, in order: a tensor file adds as many as
 * it holds, so image K (which samples with seed S+K) counts them all. */
typedef struct {
    cli_item *items;
    int n, cap;
} cli_items;

typedef struct {
    bool show;
    int done_before; /* images finished in earlier size groups */
    int total;
} progress_bar;

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: latent-encode -m MODEL [-o OUT] [options] IMAGE...\n"
            "       latent-encode -m MODEL --out-dir DIR [options] [dataset options] INPUT...\n"
            "  -m, --model PATH     diffusers VAE folder or single .safetensors checkpoint\n"
            "  IMAGE                PNG, JPEG or WebP; or a float tensor [N,3,H,W]/[3,H,W] as\n"
            "                       .npy or .safetensors (float32/16, bfloat16), taken as is\n"
            "  -o, --output PATH    one file for all images (default latents.safetensors;\n"
            "                       - for stdout)\n"
            "  --format F           with -o: safetensors, npy, json, comfyui (ComfyUI's\n"
            "                       .latent) or png (a preview); default from -o's extension\n"
            "                       (.npy .json .latent .png), else safetensors\n"
            "  --outputs LIST       with -o: of latents, mean, logvar, moments (default the\n"
            "                       first three; npy holds the first named)\n"
            "  --preview PATH       also write a PNG picture of the latents\n"
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
            "  --max-input-size MB  largest input file read (default 64, as the daemon's\n"
            "                       max_body_bytes); only regular files are read\n"
            "  --threads N          compute threads (default: one per core)\n"
            "  --kernel NAME        matrix kernel: auto (default: the best this CPU runs),\n"
            "                       avx512, avx2, generic or blas (the linked CBLAS)\n"
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
            "  --failures FILE      write each image that failed: path TAB reason, with\n"
            "                       \\\\ \\t \\n \\r and \\xNN for backslash and control bytes\n"
            "  exit status: 0 all done, 1 some image failed (or an error), 2 usage,\n"
            "  128+signal when SIGINT/SIGTERM stopped it (within seconds)\n");
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
           OPT_EXCLUDE, OPT_OVERWRITE, OPT_SHARD, OPT_PROGRESS, OPT_INTERVAL, OPT_FAILURES,
           OPT_PREVIEW, OPT_KERNEL, OPT_MAX_INPUT };
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
        {"max-input-size", required_argument, 0, OPT_MAX_INPUT},
        {"threads", required_argument, 0, OPT_THREADS},
        {"kernel", required_argument, 0, OPT_KERNEL},
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
        {"preview", required_argument, 0, OPT_PREVIEW},
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
        case OPT_KERNEL: {
            char kernel_err[LD_ERR_LEN];
            if (ld_kernel_parse(optarg, &a->kernel, kernel_err) != LD_OK)
                return fprintf(stderr, "latent-encode: --kernel: %s\n", kernel_err), -1;
            break;
        }
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
        case OPT_MAX_INPUT:
            if (parse_number(optarg, &num) || !(num >= 1 && num <= 1048576))
                return fprintf(stderr, "latent-encode: --max-input-size wants megabytes\n"), -1;
            a->max_file_bytes = (uint64_t)(num * 1048576.0);
            break;
        case OPT_OUT_DIR: a->out_dir = optarg; break;
        case OPT_FORMAT: a->format_name = optarg; break;
        case OPT_OUTPUTS:
            a->outputs_given = true;
            if (ld_kinds_parse(optarg, a->spec.kinds, &a->spec.n_kinds, err) != LD_OK)
                return fprintf(stderr, "latent-encode: --outputs: %s\n", err), -1;
            break;
        case OPT_PREVIEW: a->preview = optarg; break;
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
    if (a->out_dir && !a->out_dir[0])
        return fprintf(stderr, "latent-encode: --out-dir: an empty folder name\n"), -1;
    if (a->out_dir && output_given)
        return fprintf(stderr, "latent-encode: -o and --out-dir exclude each other\n"), -1;
    if (!a->out_dir && dataset_only)
        return fprintf(stderr, "latent-encode: --include, --exclude, --overwrite, --shard and "
                               "--failures go with --out-dir\n"), -1;
    if (a->out_dir && a->preview)
        return fprintf(stderr, "latent-encode: --preview goes with -o\n"), -1;
    if (a->out_dir && a->format_name) {
        if (strcmp(a->format_name, "npy") == 0)
            a->spec.format = LD_FILE_NPY;
        else if (strcmp(a->format_name, "safetensors") == 0)
            a->spec.format = LD_FILE_SAFETENSORS;
        else
            return fprintf(stderr, "latent-encode: --format with --out-dir wants npy or "
                                   "safetensors\n"), -1;
    }
    ld_out_format format;
    if (!a->out_dir && a->format_name && ld_out_format_parse(a->format_name, &format, err) != LD_OK)
        return fprintf(stderr, "latent-encode: --%s\n", err), -1;
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
                        cli_items *list, int h, int w, progress_bar *bar, char *err)
{
    cli_item *items = list->items;
    int n = 0;
    for (int i = 0; i < list->n; i++)
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
    for (int i = 0, k = 0; i < list->n; i++) {
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

/* -o's format: --format, else the file's extension, else safetensors. */
static ld_out_format output_format(const cli_args *a)
{
    ld_out_format format = LD_OUT_SAFETENSORS;
    if (a->format_name) {
        ld_out_format_parse(a->format_name, &format, NULL); /* checked with the options */
        return format;
    }
    static const struct {
        const char *ext;
        ld_out_format format;
    } by_ext[] = {{".npy", LD_OUT_NPY}, {".json", LD_OUT_JSON}, {".latent", LD_OUT_COMFYUI},
                  {".png", LD_OUT_PNG}};
    const char *dot = strrchr(a->output, '.');
    for (size_t i = 0; dot && i < sizeof by_ext / sizeof by_ext[0]; i++)
        if (!strcmp(dot, by_ext[i].ext))
            return by_ext[i].format;
    return format;
}

/* Bytes to path, or to standard output for "-" (ld_write_file: a FIFO or
 * device is written as it is, a file replaced whole). */
static int write_bytes(const char *path, const uint8_t *data, size_t len, char *err)
{
    if (strcmp(path, "-") == 0 && fflush(stdout) != 0)
        return ld_fail(err, LD_EIO, "standard output: write failed");
    return ld_write_file(path, data, len, err);
}

/* The results in input order, rendered as the daemon renders them. */
static int render_to(const ld_model *model, const cli_args *a, const ld_result *results,
                     int n, ld_out_format format, const char *path, char *err)
{
    unsigned kinds = LD_KINDS_DEFAULT | (a->moments ? 1u << LD_KIND_MOMENTS : 0);
    if (a->outputs_given) {
        kinds = 0;
        for (int k = 0; k < a->spec.n_kinds; k++)
            kinds |= 1u << a->spec.kinds[k];
    }
    char split_text[16];
    snprintf(split_text, sizeof split_text, "%d", a->vae_split);
    const ld_st_meta meta[] = {
        {"model_layout", ld_model_layout(model)},
        {"center_input_sample", a->center ? "true" : "false"},
        {"vae_split", a->vae_split ? split_text : "all"},
    };
    const ld_out_opts o = {.format = format, .kinds = kinds, .deterministic = !a->sample,
                           .center = a->center, .seed = a->seed, .meta = meta,
                           .n_meta = sizeof meta / sizeof meta[0]};
    ld_out_blob blob;
    int rc = ld_render(model, results, n, &o, &blob, err);
    if (rc == LD_OK)
        rc = write_bytes(path, blob.data, blob.len, err);
    free(blob.data);
    return rc;
}

static int write_output(const ld_model *model, const cli_args *a, const cli_items *list,
                        char *err)
{
    ld_result *results = malloc((size_t)list->n * sizeof *results);
    if (!results)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    for (int i = 0; i < list->n; i++)
        results[i] = list->items[i].res; /* borrowed: the items keep them */
    int rc = render_to(model, a, results, list->n, output_format(a), a->output, err);
    if (rc == LD_OK && a->preview)
        rc = render_to(model, a, results, list->n, LD_OUT_PNG, a->preview, err);
    free(results);
    return rc;
}

/* Add one file's images (a picture, or a tensor's images) to the list. */
static int load_input(const ld_model *model, const cli_args *a, const char *path,
                      cli_items *list, char *err)
{
    ld_image *images = NULL;
    int count = 0;
    const ld_image_limits limits = {.max_file_bytes = a->max_file_bytes};
    int rc = ld_inputs_load_file(path, &limits, &images, &count, err);
    if (rc != LD_OK)
        return rc;
    if (list->n + count > list->cap) {
        const int cap = (list->n + count) * 2;
        cli_item *grown = realloc(list->items, (size_t)cap * sizeof *grown);
        if (!grown)
            rc = ld_fail(err, LD_ENOMEM, "out of memory");
        else
            list->items = grown, list->cap = cap;
    }
    for (int i = 0; i < count; i++) {
        if (rc == LD_OK) {
            char inner[LD_ERR_LEN];
            int lh, lw;
            rc = ld_model_latent_size(model, images[i].height, images[i].width, &lh, &lw, inner);
            if (rc != LD_OK)
                ld_fail(err, rc, "%s: %s", path, inner);
        }
        if (rc == LD_OK)
            list->items[list->n++] = (cli_item){.img = images[i]};
        else
            ld_image_free(&images[i]);
    }
    free(images);
    return rc;
}

static int run(const cli_args *a, ld_model *model, cli_items *list, char *err)
{
    /* the compute threads first, and with them BLAS's buffers: the images and
     * the encoder's working memory then take what is left */
    ld_pool *pool = NULL;
    int rc = ld_pool_new(a->threads, &pool, err);
    if (rc == LD_OK)
        rc = ld_pool_set_kernel(pool, a->kernel, err);
    for (int i = 0; rc == LD_OK && i < a->n_images; i++)
        rc = load_input(model, a, a->images[i], list, err);
    progress_bar bar = {.show = !a->quiet && isatty(STDERR_FILENO) && list->n > 1,
                        .total = list->n};
    for (int i = 0; i < list->n && rc == LD_OK; i++) {
        if (list->items[i].res.data)
            continue; /* already encoded with an earlier image of its size */
        rc = encode_group(model, pool, a, list, list->items[i].img.height,
                          list->items[i].img.width, &bar, err);
    }
    ld_pool_free(pool);
    if (rc == LD_OK)
        rc = write_output(model, a, list, err);
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
    cli_items list = {0};
    int rc = ld_model_load(a.model_path, &a.load, &model, err);
    if (rc == LD_OK)
        rc = run(&a, model, &list, err);
    for (int i = 0; i < list.n; i++) {
        ld_image_free(&list.items[i].img);
        ld_result_free(&list.items[i].res);
    }
    free(list.items);
    ld_model_free(model);
    if (rc != LD_OK) {
        fprintf(stderr, "latent-encode: %s\n", err);
        return 1;
    }
    return 0;
}
