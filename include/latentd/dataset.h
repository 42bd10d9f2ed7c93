/* Encoding whole datasets: the inputs (files, folders walked recursively,
 * lists of paths), a deterministic share of them for one of many machines,
 * and the run that decodes, batches, encodes and writes one output file per
 * image, skipping what an earlier run finished.
 *
 *   ld_input_list in = {0};
 *   ld_inputs_add(&in, "photos/", NULL, err);        // photos/a/b/img 1.png → "a/b/img 1.png"
 *   ld_inputs_finish(&in, err);                      // sorted; two images, one output: refused
 *   ld_shard shard;
 *   ld_shard_parse("3/16", &shard, err);
 *   ld_inputs_keep_shard(&in, &shard);
 *   ld_dataset_opts opts;
 *   ld_dataset_opts_init(&opts);
 *   opts.out_dir = "latents";                        // → latents/a/b/img 1.npy
 *   ld_dataset_run(model, &in, &opts, &counts, err);
 *   ld_inputs_free(&in); */
#ifndef LATENTD_DATASET_H
#define LATENTD_DATASET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/result.h"

/* ---- inputs ---- */
typedef struct {
    char *path;     /* what to open (owned) */
    size_t rel_off; /* path + rel_off: the name the output mirrors (see ld_inputs_add) */
} ld_input;

typedef struct {
    ld_input *items;
    size_t count, cap;
} ld_input_list;

static inline const char *ld_input_rel(const ld_input *in) { return in->path + in->rel_off; }

/* fnmatch(3) patterns matched against an input's relative name, with '*'
 * crossing '/' ("*.png" takes every PNG at any depth, "raw/?*" all under raw/).
 * An input is taken when it matches some include (or there is none) and no
 * exclude. */
typedef struct {
    const char *const *include;
    int n_include;
    const char *const *exclude;
    int n_exclude;
} ld_input_filter;

/* Add what one argument names (filter may be NULL):
 *  - a folder: every regular file below it, its relative name the path below
 *    the folder ("a/b/img 1.png"); without an include pattern only files
 *    named *.png, *.jpg, *.jpeg, *.webp (any case); names starting with '.'
 *    and symbolic links to folders are not followed;
 *  - "@FILE": the paths in FILE, one a line; "-": the same from standard input;
 *  - anything else: one file.
 * A file named directly or in a list keeps its path as its relative name,
 * less a leading "/" or "./"; a ".." in it is refused (LD_EINVAL), since the
 * output would land outside the output folder. */
int ld_inputs_add(ld_input_list *list, const char *arg, const ld_input_filter *filter,
                  char *err);
/* Sort by relative name (the order of the run, the same on every machine)
 * and refuse two inputs whose outputs would be one file ("a/x.png" and
 * "a/x.jpg"): LD_EINVAL naming both. */
int ld_inputs_finish(ld_input_list *list, char *err);
void ld_inputs_free(ld_input_list *list); /* the items and their paths; the list may be reused */

/* out_dir/rel with rel's extension replaced by format's, into buf. */
int ld_output_path(const char *out_dir, const char *rel, ld_file_format format, char *buf,
                   size_t size, char *err);

/* ---- sharding: one of `count` machines takes the inputs whose relative
 * name hashes (FNV-1a, 64-bit) to `index` modulo count ---- */
typedef struct {
    int index, count; /* 0 <= index < count */
} ld_shard;

uint64_t ld_fnv1a64(const void *data, size_t len);
/* "I/N", or "auto": SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN when set)
 * with SLURM_ARRAY_TASK_COUNT, else JOB_COMPLETION_INDEX with
 * LATENTD_SHARD_COUNT; LD_EINVAL saying which is missing when neither pair is set. */
int ld_shard_parse(const char *text, ld_shard *shard, char *err);
bool ld_shard_has(const ld_shard *shard, const char *rel);
/* Keep the inputs of one shard (in order), free the others. */
void ld_inputs_keep_shard(ld_input_list *list, const ld_shard *shard);

/* ---- the run ---- */
typedef struct {
    size_t total;   /* inputs */
    size_t encoded; /* written by this run */
    size_t skipped; /* whole outputs an earlier run left */
    size_t failed;  /* unreadable, broken or too small */
} ld_dataset_counts;

typedef enum { LD_EV_ENCODED, LD_EV_SKIPPED, LD_EV_FAILED } ld_event_kind;

typedef struct {
    ld_event_kind kind;
    const ld_input *input;
    const char *message;             /* LD_EV_FAILED: why, one line */
    const ld_dataset_counts *counts; /* including this event */
} ld_dataset_event;

/* Called on the thread that called ld_dataset_run, once per input. */
typedef void (*ld_dataset_event_fn)(void *ctx, const ld_dataset_event *ev);

typedef struct {
    const char *out_dir;
    ld_output_spec output;
    bool overwrite;         /* encode even when a whole output exists */
    ld_encode_opts encode;  /* vae_split is the batch size (<= 0: 1); its seeds are ignored */
    uint64_t seed;          /* sampling: an image's seed is seed + ld_fnv1a64(its rel) */
    ld_image_limits limits; /* for decoding */
    /* decoded images held at once, waiting in the queue or for batch-mates of
     * their size; 0: 4 batches.  Memory stays bounded by this whatever the
     * dataset's size. */
    int max_held;
    /* once true: stop; the batch being encoded ends after its layer and
     * is not written (the next run encodes it) */
    const _Atomic bool *stop;
    ld_dataset_event_fn on_event;
    void *event_ctx;
} ld_dataset_opts;

/* The defaults: npy of moments, batches of 1, no limits. */
void ld_dataset_opts_init(ld_dataset_opts *opts);

/* Encode every input into its output under opts->out_dir, never outside it
 * (latentd/safefile.h: ld_tree_dir, ld_write_at; a folder below out_dir that
 * is a symbolic link fails the images below it).  A reader thread
 * checks for finished outputs and decodes the next images while the encoder
 * runs; images of one size are batched.  A bad image is an LD_EV_FAILED
 * event, counted, and the run goes on.  Returns LD_OK when every input was
 * handled (counts->failed may be non-zero), LD_ECANCELLED when *opts->stop
 * ended it (every output written is whole), or the error that made writing
 * impossible (LD_EIO). */
int ld_dataset_run(const ld_model *model, const ld_input_list *inputs,
                   const ld_dataset_opts *opts, ld_dataset_counts *counts, char *err);

#endif
