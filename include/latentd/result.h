/* One image's results, and the file that holds them.  The encoder works on
 * batches ([n, C, h, w]); a dataset run (and, later, the daemon) hands out
 * results per image, so the batching never shows in what is written.
 *
 *   ld_result res[n];
 *   ld_encode_results(model, images, n, &opts, res, err);   // n images of one size
 *   ld_output_spec spec = {.format = LD_FILE_NPY, .n_kinds = 1, .kinds = {LD_KIND_MOMENTS}};
 *   ld_result_write(&res[0], &spec, "out/a/img.npy", err); // via a temporary file beside it
 *   ld_result_free(&res[0]); */
#ifndef LATENTD_RESULT_H
#define LATENTD_RESULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/image.h"
#include "latentd/safetensors.h"

/* What can be written of a result. */
typedef enum { LD_KIND_LATENTS, LD_KIND_MEAN, LD_KIND_LOGVAR, LD_KIND_MOMENTS } ld_kind;
#define LD_N_KINDS 4

const char *ld_kind_name(ld_kind kind);
/* A comma-separated list ("moments", "latents,mean") into kinds[] in the
 * order named; unknown or repeated names are LD_EINVAL. */
int ld_kinds_parse(const char *list, ld_kind kinds[LD_N_KINDS], int *n_kinds, char *err);

typedef struct {
    int width, height; /* the image's */
    int channels;      /* the model's latent channels, C */
    int lh, lw;        /* the latent's size */
    /* owned, one block: latents, mean, logvar (C·lh·lw each; logvar clamped),
     * then moments (2C·lh·lw: mean and logvar before the clamp) */
    float *data;
} ld_result;

/* kind's tensor inside r, [C, lh, lw] or [2C, lh, lw] for moments (shape may
 * be NULL).  Borrowed: valid while r is. */
const float *ld_result_tensor(const ld_result *r, ld_kind kind, int64_t shape[3]);
/* Frees r->data (r itself is the caller's); accepts NULL. */
void ld_result_free(ld_result *r);

/* Encode n images of one size (images[i]->rgb, [3, h, w]) into results[0..n),
 * which the caller frees with ld_result_free.  opts as for ld_encode
 * (opts->seeds: one per image when sampling).  On failure no result is
 * left allocated. */
int ld_encode_results(const ld_model *model, const ld_image *const *images, int n,
                      const ld_encode_opts *opts, ld_result *results, char *err);

/* ---- one image's output file ---- */
typedef enum { LD_FILE_NPY, LD_FILE_SAFETENSORS } ld_file_format;

typedef struct {
    ld_file_format format;
    int n_kinds;
    /* npy holds kinds[0] alone; safetensors every kind, named by ld_kind_name */
    ld_kind kinds[LD_N_KINDS];
    const ld_st_meta *meta; /* safetensors' __metadata__ (borrowed; may be NULL) */
    size_t n_meta;
} ld_output_spec;

/* ".npy" or ".safetensors" */
const char *ld_file_extension(ld_file_format format);

/* The file's bytes (malloc'd): tensors without a batch axis, [C, lh, lw]
 * ([2C, lh, lw] for moments). */
int ld_result_serialize(const ld_result *r, const ld_output_spec *spec, uint8_t **buf,
                        size_t *len, char *err);
/* Serialise and write to path (latentd/safefile.h, ld_write_file): its
 * folders are made as needed, the bytes go to a temporary file of a name
 * no other process uses in the same folder, which is then renamed over
 * path, so a process killed at any moment leaves either no file at path or
 * a whole one; a FIFO or device at path is written as it is.  LD_EIO when
 * the file system refuses. */
int ld_result_write(const ld_result *r, const ld_output_spec *spec, const char *path, char *err);
/* The same into name in the folder dir_fd (ld_write_at: a link at name is
 * replaced, never followed); shown names it in messages. */
int ld_result_write_at(const ld_result *r, const ld_output_spec *spec, int dir_fd,
                       const char *name, const char *shown, char *err);
/* len bytes to path the same way (ld_write_file). */
int ld_write_atomic(const char *path, const uint8_t *buf, size_t len, char *err);

/* Whether path holds a whole output of spec for a model of `channels` latent
 * channels: its header parses, its size is what the header says and it holds
 * every tensor spec names in the right shape family.  LD_OK when whole, LD_EIO
 * when there is no file, LD_EFORMAT when it is not whole. */
int ld_output_check(const char *path, const ld_output_spec *spec, int channels, char *err);
/* The same for name in the folder dir_fd: a link, a FIFO or any other file
 * that is not regular is not whole (LD_EFORMAT), and is neither followed
 * nor waited on. */
int ld_output_check_at(int dir_fd, const char *name, const char *shown,
                       const ld_output_spec *spec, int channels, char *err);

#endif
