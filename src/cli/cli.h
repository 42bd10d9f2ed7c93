/* latent-encode's options, shared by its two modes: one output file for a
 * list of images (latent-encode.c) and one file per image for a dataset
 * (encode-dataset.c). */
#ifndef LATENTD_CLI_H
#define LATENTD_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/output.h"
#include "latentd/result.h"
#include "latentd/safetensors.h"

typedef enum { PROGRESS_AUTO, PROGRESS_BAR, PROGRESS_JSON, PROGRESS_NONE } progress_mode;

typedef struct {
    const char *model_path;
    const char *output;
    int vae_split;
    int threads;
    ld_kernel kernel; /* --kernel; LD_KERNEL_AUTO (0) by default */
    bool sample;
    bool has_seed;
    uint64_t seed;
    bool center;
    bool quiet;
    bool moments;
    size_t max_memory;
    uint64_t max_file_bytes; /* --max-input-size: an input file, at most (0: the default) */
    ld_load_opts load;
    char **images; /* the arguments after the options */
    int n_images;
    /* one-file mode (-o) */
    const char *format_name; /* --format as given; without it -o's extension decides */
    bool outputs_given;      /* --outputs (spec.kinds) rather than the default three */
    const char *preview;     /* --preview PATH: a PNG picture of the latents */
    /* dataset mode (--out-dir) */
    const char *out_dir;
    ld_output_spec spec; /* format and kinds (meta filled when writing) */
    bool overwrite;
    const char *shard;
    const char **include, **exclude;
    int n_include, n_exclude;
    progress_mode progress;
    double progress_interval; /* seconds between JSON lines */
    const char *failures;
} cli_args;

/* The safetensors __metadata__ both modes write: fills meta[] (room for 8)
 * and returns its count; the texts live in the caller's buffers. */
size_t cli_metadata(const ld_model *model, const cli_args *a, ld_st_meta meta[8],
                    char seed_text[32], char split_text[16]);

/* The dataset mode: list, shard, encode, report.  Returns the exit status. */
int cli_run_dataset(const cli_args *a, const ld_model *model);

#endif
