/* Per-image results and their files; see result.h. */
#include "latentd/result.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "latentd/npy.h"
#include "latentd/safefile.h"

static const char *const kind_names[LD_N_KINDS] = {"latents", "mean", "logvar", "moments"};

const char *ld_kind_name(ld_kind kind)
{
    assert((unsigned)kind < LD_N_KINDS);
    return kind_names[kind];
}

int ld_kinds_parse(const char *list, ld_kind kinds[LD_N_KINDS], int *n_kinds, char *err)
{
    *n_kinds = 0;
    unsigned seen = 0;
    const char *p = list;
    for (;;) {
        const size_t len = strcspn(p, ",");
        int k = 0;
        while (k < LD_N_KINDS && !(strlen(kind_names[k]) == len && !memcmp(kind_names[k], p, len)))
            k++;
        if (k == LD_N_KINDS)
            return ld_fail(err, LD_EINVAL, "unknown output '%.*s' (latents, mean, logvar, moments)",
                           (int)len, p);
        if (seen & (1u << k))
            return ld_fail(err, LD_EINVAL, "output '%s' named twice", kind_names[k]);
        seen |= 1u << k;
        kinds[(*n_kinds)++] = (ld_kind)k;
        if (!p[len])
            return LD_OK;
        p += len + 1;
    }
}

const float *ld_result_tensor(const ld_result *r, ld_kind kind, int64_t shape[3])
{
    const size_t per = (size_t)r->channels * r->lh * r->lw;
    if (shape) {
        shape[0] = kind == LD_KIND_MOMENTS ? 2 * r->channels : r->channels;
        shape[1] = r->lh;
        shape[2] = r->lw;
    }
    return r->data + per * (size_t)kind; /* moments come after the three others */
}

void ld_result_free(ld_result *r)
{
    if (!r)
        return;
    free(r->data);
    r->data = NULL;
}

int ld_encode_results(const ld_model *model, const ld_image *const *images, int n,
                      const ld_encode_opts *opts, ld_result *results, char *err)
{
    assert(n > 0);
    const int h = images[0]->height, w = images[0]->width;
    const int C = ld_model_config(model)->latent_channels;
    int lh, lw;
    int rc = ld_model_latent_size(model, h, w, &lh, &lw, err);
    if (rc != LD_OK)
        return rc;
    const size_t image_floats = (size_t)3 * h * w, per = (size_t)C * lh * lw;
    float *batch = ld_alloc_aligned((size_t)n * image_floats, sizeof(float)); /* [n, 3, h, w] */
    float *res = ld_alloc_aligned((size_t)n * per * 5, sizeof(float)); /* latents, mean, logvar:
                                                                   [n, C, lh, lw]; moments [n, 2C, lh, lw] */
    if (!batch || !res) {
        rc = ld_fail(err, LD_ENOMEM, "out of memory for a batch of %d %dx%d images", n, w, h);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        assert(images[i]->height == h && images[i]->width == w);
        memcpy(batch + i * image_floats, images[i]->rgb, image_floats * sizeof(float));
    }
    ld_encode_out out = {res, res + n * per, res + 2 * n * per, res + 3 * n * per, 0};
    rc = ld_encode(model, batch, n, h, w, opts, &out, err);
    for (int i = 0; rc == LD_OK && i < n; i++) {
        ld_result *r = &results[i];
        *r = (ld_result){w, h, C, lh, lw, malloc(per * 5 * sizeof(float))};
        if (!r->data) {
            for (int j = 0; j < i; j++)
                ld_result_free(&results[j]);
            rc = ld_fail(err, LD_ENOMEM, "out of memory");
            break;
        }
        memcpy(r->data, out.latents + i * per, per * sizeof(float));
        memcpy(r->data + per, out.mean + i * per, per * sizeof(float));
        memcpy(r->data + 2 * per, out.logvar + i * per, per * sizeof(float));
        memcpy(r->data + 3 * per, out.moments + 2 * i * per, 2 * per * sizeof(float));
    }
done:
    ld_free_aligned(batch);
    ld_free_aligned(res);
    return rc;
}

const char *ld_file_extension(ld_file_format format)
{
    return format == LD_FILE_NPY ? ".npy" : ".safetensors";
}

int ld_result_serialize(const ld_result *r, const ld_output_spec *spec, uint8_t **buf,
                        size_t *len, char *err)
{
    assert(spec->n_kinds >= 1 && spec->n_kinds <= LD_N_KINDS);
    if (spec->format == LD_FILE_NPY) {
        int64_t shape[3];
        const float *data = ld_result_tensor(r, spec->kinds[0], shape);
        return ld_npy_serialize(data, 3, shape, buf, len, err);
    }
    ld_st_out outs[LD_N_KINDS];
    for (int i = 0; i < spec->n_kinds; i++) {
        outs[i] = (ld_st_out){ld_kind_name(spec->kinds[i]), 3, {0}, NULL};
        outs[i].data = ld_result_tensor(r, spec->kinds[i], outs[i].shape);
    }
    return ld_st_serialize(outs, (size_t)spec->n_kinds, spec->meta, spec->n_meta, buf, len, err);
}

int ld_result_write(const ld_result *r, const ld_output_spec *spec, const char *path, char *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = ld_result_serialize(r, spec, &buf, &len, err);
    if (rc == LD_OK)
        rc = ld_write_file(path, buf, len, err);
    free(buf);
    return rc;
}

int ld_result_write_at(const ld_result *r, const ld_output_spec *spec, int dir_fd,
                       const char *name, const char *shown, char *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = ld_result_serialize(r, spec, &buf, &len, err);
    if (rc == LD_OK)
        rc = ld_write_at(dir_fd, name, shown, buf, len, err);
    free(buf);
    return rc;
}

int ld_write_atomic(const char *path, const uint8_t *buf, size_t len, char *err)
{
    return ld_write_file(path, buf, len, err);
}

static int check_npy(int fd, const char *shown, const ld_output_spec *spec, int channels,
                     char *err)
{
    struct stat st;
    uint8_t head[LD_NPY_HEADER_MAX * 4];
    const ssize_t got = fstat(fd, &st) == 0 ? read(fd, head, sizeof head) : -1;
    if (got < 0)
        return ld_fail(err, LD_EFORMAT, "%s: %s", shown, strerror(errno));
    int ndim;
    int64_t shape[LD_NPY_MAX_DIMS];
    char inner[LD_ERR_LEN];
    if (ld_npy_check(head, (size_t)got, (uint64_t)st.st_size, &ndim, shape, NULL, inner) != LD_OK)
        return ld_fail(err, LD_EFORMAT, "%s: %s", shown, inner);
    const int64_t want = spec->kinds[0] == LD_KIND_MOMENTS ? 2 * channels : channels;
    if (ndim != 3 || shape[0] != want || shape[1] < 1 || shape[2] < 1)
        return ld_fail(err, LD_EFORMAT, "%s: not a [%lld, h, w] array", shown, (long long)want);
    return LD_OK;
}

/* An output is ours, so only a generous bound: a file past it is not whole. */
#define OUTPUT_MAX_BYTES ((uint64_t)1 << 32)

/* Our outputs' headers are a few hundred bytes (more with --meta); a longer
 * one is read as not whole rather than held in memory. */
#define OUTPUT_HEADER_MAX ((uint64_t)16 << 20)

/* len bytes at offset, all of them, or LD_EFORMAT (a file cut short). */
static int read_at(int fd, void *buf, size_t len, off_t offset, const char *shown, char *err)
{
    uint8_t *p = buf;
    while (len > 0) {
        const ssize_t got = pread(fd, p, len, offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return ld_fail(err, LD_EFORMAT, "%s: %s", shown,
                           got < 0 ? strerror(errno) : "shorter than its header says");
        p += got;
        len -= (size_t)got;
        offset += got;
    }
    return LD_OK;
}

/* The 8-byte length and the JSON header, and only those (a skip check of
 * many large outputs must not read them whole), into *head (malloc'd). */
static int read_st_header(int fd, const char *shown, uint64_t size, uint8_t **head,
                          size_t *len, char *err)
{
    uint8_t le[8];
    if (size < 8)
        return ld_fail(err, LD_EFORMAT, "%s: too short for a safetensors file", shown);
    int rc = read_at(fd, le, sizeof le, 0, shown, err);
    if (rc != LD_OK)
        return rc;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | le[i];
    if (n > OUTPUT_HEADER_MAX || n > size - 8)
        return ld_fail(err, LD_EFORMAT, "%s: header length %llu does not fit", shown,
                       (unsigned long long)n);
    *len = (size_t)n + 8;
    if (!(*head = malloc(*len)))
        return ld_fail(err, LD_ENOMEM, "%s: out of memory", shown);
    memcpy(*head, le, sizeof le);
    rc = read_at(fd, *head + 8, (size_t)n, 8, shown, err);
    if (rc != LD_OK) {
        free(*head);
        *head = NULL;
    }
    return rc;
}

static int check_safetensors(int fd, const char *shown, const ld_output_spec *spec,
                             int channels, char *err)
{
    struct stat st;
    uint8_t *data = NULL;
    size_t len = 0;
    char inner[LD_ERR_LEN];
    if (fstat(fd, &st) != 0)
        return ld_fail(err, LD_EFORMAT, "%s: %s", shown, strerror(errno));
    if (read_st_header(fd, shown, (uint64_t)st.st_size, &data, &len, inner) != LD_OK)
        return ld_fail(err, LD_EFORMAT, "%s", inner);
    ld_st_file *f;
    /* checks every tensor's offsets against the file's size */
    if (ld_st_open_header(data, len, (uint64_t)st.st_size, shown, &f, inner) != LD_OK) {
        free(data);
        return ld_fail(err, LD_EFORMAT, "%s", inner);
    }
    int rc = LD_OK;
    int64_t lh = -1, lw = -1;
    for (int i = 0; rc == LD_OK && i < spec->n_kinds; i++) {
        const ld_kind k = spec->kinds[i];
        const ld_st_tensor *t = ld_st_find(f, ld_kind_name(k));
        const int64_t want = k == LD_KIND_MOMENTS ? 2 * channels : channels;
        if (!t || t->dtype != LD_DT_F32 || t->ndim != 3 || t->shape[0] != want ||
            (lh >= 0 && (t->shape[1] != lh || t->shape[2] != lw)))
            rc = ld_fail(err, LD_EFORMAT, "%s: no whole '%s' tensor", shown, ld_kind_name(k));
        else
            lh = t->shape[1], lw = t->shape[2];
    }
    ld_st_close(f);
    free(data);
    return rc;
}

int ld_output_check_at(int dir_fd, const char *name, const char *shown,
                       const ld_output_spec *spec, int channels, char *err)
{
    int fd;
    char inner[LD_ERR_LEN];
    /* never through a link, never waiting on a FIFO: either is not a whole output */
    const int rc = ld_open_regular(dir_fd, name, false, OUTPUT_MAX_BYTES, shown, &fd, inner);
    if (rc != LD_OK) {
        const bool missing = faccessat(dir_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) != 0 &&
                             errno == ENOENT;
        return ld_fail(err, missing ? LD_EIO : LD_EFORMAT, "%s", inner);
    }
    const int status = spec->format == LD_FILE_NPY ? check_npy(fd, shown, spec, channels, err)
                                                   : check_safetensors(fd, shown, spec, channels,
                                                                       err);
    close(fd);
    return status;
}

int ld_output_check(const char *path, const ld_output_spec *spec, int channels, char *err)
{
    return ld_output_check_at(AT_FDCWD, path, path, spec, channels, err);
}
