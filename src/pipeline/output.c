/* Results → answer and file bytes; see latentd/output.h. */
#include "latentd/output.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentd/base64.h"
#include "latentd/npy.h"

/* One kind of tensor for images [first, first+count), stacked. */
typedef struct {
    ld_kind kind;
    int64_t shape[4];
    float *data; /* malloc'd */
} stack;

static size_t stack_numel(const stack *t)
{
    return (size_t)(t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3]);
}

static int gather(const ld_result *results, int first, int count, ld_kind kind, stack *t)
{
    int64_t one[3];
    ld_result_tensor(&results[first], kind, one);
    const size_t per = (size_t)(one[0] * one[1] * one[2]);
    t->kind = kind;
    t->shape[0] = count;
    memcpy(t->shape + 1, one, sizeof one);
    t->data = malloc((size_t)count * per * sizeof(float));
    if (!t->data)
        return LD_ENOMEM;
    for (int i = 0; i < count; i++)
        memcpy(t->data + i * per, ld_result_tensor(&results[first + i], kind, NULL),
               per * sizeof(float));
    return LD_OK;
}

static bool same_size(const ld_result *results, int n)
{
    for (int i = 1; i < n; i++)
        if (results[i].lh != results[0].lh || results[i].lw != results[0].lw ||
            results[i].width != results[0].width || results[i].height != results[0].height)
            return false;
    return true;
}

/* The first kind named, in ld_kind order (the latents when among them). */
static ld_kind first_kind(unsigned kinds)
{
    for (int k = 0; k < LD_N_KINDS; k++)
        if (kinds & (1u << k))
            return (ld_kind)k;
    return LD_KIND_LATENTS;
}

static void blob_take(ld_out_blob *out, void *data, size_t len, const char *media_type)
{
    out->data = data;
    out->len = len;
    out->media_type = media_type;
}

int ld_out_format_parse(const char *name, ld_out_format *out, char *err)
{
    static const ld_out_format named[] = {LD_OUT_JSON, LD_OUT_SAFETENSORS, LD_OUT_NPY,
                                          LD_OUT_COMFYUI, LD_OUT_PNG};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (!strcmp(name, ld_out_format_name(named[i]))) {
            *out = named[i];
            return LD_OK;
        }
    return ld_fail(err, LD_EINVAL, "format: want json, safetensors, npy, comfyui or png");
}

const char *ld_out_format_name(ld_out_format format)
{
    static const char *const names[] = {"json", "safetensors", "npy", "comfyui", "png", "raw"};
    return (unsigned)format < sizeof names / sizeof names[0] ? names[format] : "unknown";
}

/* ---------------- JSON ---------------- */

/* jansson's integers are signed 64-bit: a seed from 2^63 up goes out as a
 * decimal string, which the daemon accepts back as well. */
static json_t *seed_json(uint64_t seed)
{
    if (seed <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)seed);
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, seed);
    return json_string(text);
}

static json_t *shape_json(const int64_t shape[4])
{
    return json_pack("[IIII]", (json_int_t)shape[0], (json_int_t)shape[1], (json_int_t)shape[2],
                     (json_int_t)shape[3]);
}

/* nested lists [N][C][h][w] */
static json_t *nested_list(const float *data, const int64_t *shape, int ndim)
{
    json_t *arr = json_array();
    size_t stride = 1;
    for (int d = 1; d < ndim; d++)
        stride *= (size_t)shape[d];
    for (int64_t i = 0; arr && i < shape[0]; i++) {
        /* JSON has no NaN or Inf (a broken model could make them): null */
        json_t *v = ndim > 1          ? nested_list(data + i * stride, shape + 1, ndim - 1)
                    : isfinite(data[i]) ? json_real(data[i])
                                        : json_null();
        if (json_array_append_new(arr, v) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *stack_json(const stack *t, bool list)
{
    json_t *data;
    if (list) {
        data = nested_list(t->data, t->shape, 4);
    } else {
        /* little-endian float32: x86 and arm64 hosts are LE already */
        char *b64 = ld_base64_encode((const uint8_t *)t->data, stack_numel(t) * sizeof(float), NULL);
        data = b64 ? json_string(b64) : NULL;
        free(b64);
    }
    if (!data)
        return NULL;
    return json_pack("{s:o, s:s, s:o}", "shape", shape_json(t->shape), "dtype", "float32", "data",
                     data);
}

/* the requested tensors of images [first, first+count) into obj */
static int add_tensors(json_t *obj, const ld_result *results, int first, int count,
                       const ld_out_opts *o)
{
    for (int k = 0; k < LD_N_KINDS; k++) {
        if (!(o->kinds & (1u << k)))
            continue;
        stack t;
        if (gather(results, first, count, (ld_kind)k, &t) != LD_OK)
            return LD_ENOMEM;
        json_t *tj = stack_json(&t, o->list_encoding);
        if (!json_object_get(obj, "shape") && k != LD_KIND_MOMENTS)
            json_object_set_new(obj, "shape", shape_json(t.shape));
        free(t.data);
        if (!tj || json_object_set_new(obj, ld_kind_name((ld_kind)k), tj) != 0)
            return LD_ENOMEM;
    }
    return LD_OK;
}

/* Images of one size stack into one tensor per output; else "results" holds
 * one object per image. */
static int add_all_tensors(json_t *root, const ld_result *results, int n, const ld_out_opts *o)
{
    if (same_size(results, n))
        return add_tensors(root, results, 0, n, o);
    json_t *list = json_array();
    if (json_object_set_new(root, "results", list) != 0)
        return LD_ENOMEM;
    for (int i = 0; i < n; i++) {
        json_t *one = json_object();
        if (json_array_append_new(list, one) != 0)
            return LD_ENOMEM;
        int rc = add_tensors(one, results, i, 1, o);
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

static int render_json(const ld_model *model, const ld_result *results, int n,
                       const ld_out_opts *o, ld_out_blob *out)
{
    json_t *root = json_pack("{s:s, s:s, s:i, s:b, s:b, s:s}", "model", ld_model_name(model),
                             "scaling", ld_model_scaling(model), "latent_channels",
                             ld_model_config(model)->latent_channels, "deterministic",
                             o->deterministic, "center_input_sample", o->center, "dtype",
                             "float32");
    if (!root)
        return LD_ENOMEM;
    int rc = LD_OK;
    if (!o->deterministic && json_object_set_new(root, "seed", seed_json(o->seed)) != 0)
        rc = LD_ENOMEM;
    if (rc == LD_OK)
        rc = add_all_tensors(root, results, n, o);
    char *text = rc == LD_OK ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text)
        return LD_ENOMEM;
    blob_take(out, text, strlen(text), "application/json");
    return LD_OK;
}

/* ---------------- safetensors ---------------- */

/* The metadata every file carries, then the caller's. */
static int serialize_st(const ld_model *model, const ld_out_opts *o, const ld_st_out *tensors,
                        size_t n_tensors, ld_out_blob *out, char *err)
{
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, o->seed);
    ld_st_meta meta[16] = {
        {"format", "pt"},
        {"model", ld_model_name(model)},
        {"scaling", ld_model_scaling(model)},
        {"latents", o->deterministic ? "mode" : "sample"},
        {"seed", o->deterministic ? "none" : seed},
    };
    size_t n_meta = 5;
    for (size_t i = 0; i < o->n_meta && n_meta < sizeof meta / sizeof meta[0]; i++)
        meta[n_meta++] = o->meta[i];
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = ld_st_serialize(tensors, n_tensors, meta, n_meta, &buf, &len, err);
    if (rc == LD_OK)
        blob_take(out, buf, len, "application/octet-stream");
    return rc;
}

static int render_safetensors(const ld_model *model, const ld_result *results, int n,
                              const ld_out_opts *o, ld_out_blob *out, char *err)
{
    const bool stacked = same_size(results, n);
    const int sets = stacked ? 1 : n;
    stack *ts = calloc((size_t)sets * LD_N_KINDS, sizeof *ts);
    ld_st_out *outs = calloc((size_t)sets * LD_N_KINDS, sizeof *outs);
    char(*names)[32] = calloc((size_t)sets * LD_N_KINDS, sizeof *names);
    int rc = ts && outs && names ? LD_OK : LD_ENOMEM, count = 0;
    for (int s = 0; rc == LD_OK && s < sets; s++)
        for (int k = 0; rc == LD_OK && k < LD_N_KINDS; k++) {
            if (!(o->kinds & (1u << k)))
                continue;
            rc = gather(results, stacked ? 0 : s, stacked ? n : 1, (ld_kind)k, &ts[count]);
            if (stacked)
                snprintf(names[count], sizeof names[count], "%s", ld_kind_name((ld_kind)k));
            else
                snprintf(names[count], sizeof names[count], "%s.%d", ld_kind_name((ld_kind)k), s);
            outs[count] = (ld_st_out){names[count], 4, {0}, ts[count].data};
            memcpy(outs[count].shape, ts[count].shape, sizeof ts[count].shape);
            count++;
        }
    if (rc != LD_OK)
        ld_fail(err, rc, "out of memory");
    else
        rc = serialize_st(model, o, outs, (size_t)count, out, err);
    for (int i = 0; ts && i < count; i++)
        free(ts[i].data);
    free(ts);
    free(outs);
    free(names);
    return rc;
}

/* ---------------- one array: npy, raw, comfyui ---------------- */

static int render_npy(const ld_result *results, int n, const ld_out_opts *o, ld_out_blob *out,
                      char *err)
{
    stack t;
    if (gather(results, 0, n, first_kind(o->kinds), &t) != LD_OK)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    /* InvSR reads one image's moments as [2C, h, w]: no batch axis */
    const bool invsr = n == 1 && t.kind == LD_KIND_MOMENTS;
    out->ndim = invsr ? 3 : 4;
    memcpy(out->shape, invsr ? t.shape + 1 : t.shape, (size_t)out->ndim * sizeof(int64_t));
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = ld_npy_serialize(t.data, out->ndim, out->shape, &buf, &len, err);
    free(t.data);
    if (rc == LD_OK)
        blob_take(out, buf, len, "application/x-npy");
    return rc;
}

static int render_raw(const ld_result *results, int n, const ld_out_opts *o, ld_out_blob *out,
                      char *err)
{
    stack t;
    /* the mean is the mode; the latents are the mode (or a sample) as the
     * model's config scales it */
    if (gather(results, 0, n, o->rescale ? LD_KIND_MEAN : LD_KIND_LATENTS, &t) != LD_OK)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    const size_t count = stack_numel(&t);
    if (o->rescale)
        for (size_t i = 0; i < count; i++)
            t.data[i] = (float)(((double)t.data[i] - o->shift_factor) * o->scaling_factor);
    out->ndim = 4;
    memcpy(out->shape, t.shape, sizeof t.shape);
    blob_take(out, t.data, count * sizeof(float), "application/octet-stream");
    return LD_OK;
}

/* z before the model's scaling: the mean itself for the mode, else the
 * sample with the scaling undone. */
static void unscale(const ld_vae_config *cfg, const ld_result *r, bool deterministic, float *z)
{
    const size_t plane = (size_t)r->lh * r->lw;
    const float *src = ld_result_tensor(r, deterministic ? LD_KIND_MEAN : LD_KIND_LATENTS, NULL);
    for (int c = 0; c < r->channels; c++)
        for (size_t i = 0; i < plane; i++) {
            const float v = src[c * plane + i];
            float u = v;
            if (!deterministic && cfg->has_latents_stats)
                u = v * cfg->latents_std[c] / cfg->scaling_factor + cfg->latents_mean[c];
            else if (!deterministic)
                u = v / cfg->scaling_factor + (cfg->has_shift_factor ? cfg->shift_factor : 0.0f);
            z[c * plane + i] = u;
        }
}

/* ComfyUI's SaveLatent file: the unscaled latents (ComfyUI scales them when
 * it samples) and an empty tensor marking the format version. */
static int render_comfyui(const ld_model *model, const ld_result *results, int n,
                          const ld_out_opts *o, ld_out_blob *out, char *err)
{
    const ld_result *r = &results[0];
    const size_t per = (size_t)r->channels * r->lh * r->lw;
    float *z = malloc((size_t)n * per * sizeof(float));
    if (!z)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        unscale(ld_model_config(model), &results[i], o->deterministic, z + i * per);
    const ld_st_out tensors[] = {
        {"latent_tensor", 4, {n, r->channels, r->lh, r->lw}, z},
        {"latent_format_version_0", 1, {0}, NULL},
    };
    int rc = serialize_st(model, o, tensors, 2, out, err);
    free(z);
    return rc;
}

/* ---------------- PNG preview ---------------- */

typedef struct {
    const char *name;
    int channels;
    const float (*factors)[3];
    const float *bias; /* may be NULL */
} latent_space;

/* ComfyUI's latent_rgb_factors (comfy/latent_formats.py), applied to the
 * latents as the model scales them. */
static const float sd1_factors[4][3] = {
    {0.3512f, 0.2297f, 0.3227f}, {0.3250f, 0.4974f, 0.2350f},
    {-0.2829f, 0.1762f, 0.2721f}, {-0.2120f, -0.2616f, -0.7177f}};
static const float sdxl_factors[4][3] = {
    {0.3651f, 0.4232f, 0.4341f}, {-0.2533f, -0.0042f, 0.1068f},
    {0.1076f, 0.1111f, -0.0362f}, {-0.3165f, -0.2492f, -0.2188f}};
static const float sdxl_bias[3] = {0.1084f, -0.0175f, -0.0011f};
static const float sd3_factors[16][3] = {
    {-0.0922f, -0.0175f, 0.0749f}, {0.0311f, 0.0633f, 0.0954f}, {0.1994f, 0.0927f, 0.0458f},
    {0.0856f, 0.0339f, 0.0902f},   {0.0587f, 0.0272f, -0.0496f}, {-0.0006f, 0.1104f, 0.0309f},
    {0.0978f, 0.0306f, 0.0427f},   {-0.0042f, 0.1038f, 0.1358f}, {-0.0194f, 0.0020f, 0.0669f},
    {-0.0488f, 0.0130f, -0.0268f}, {0.0922f, 0.0988f, 0.0951f},  {-0.0278f, 0.0524f, -0.0542f},
    {0.0332f, 0.0456f, 0.0895f},   {-0.0069f, -0.0030f, -0.0810f}, {-0.0596f, -0.0465f, -0.0293f},
    {-0.1448f, -0.1463f, -0.1189f}};
static const float sd3_bias[3] = {0.2394f, 0.2135f, 0.1925f};
static const float flux_factors[16][3] = {
    {-0.0346f, 0.0244f, 0.0681f}, {0.0034f, 0.0210f, 0.0687f},   {0.0275f, -0.0668f, -0.0433f},
    {-0.0174f, 0.0160f, 0.0617f}, {0.0859f, 0.0721f, 0.0329f},   {0.0004f, 0.0383f, 0.0115f},
    {0.0405f, 0.0861f, 0.0915f},  {-0.0236f, -0.0185f, -0.0259f}, {-0.0245f, 0.0250f, 0.1180f},
    {0.1008f, 0.0755f, -0.0421f}, {-0.0515f, 0.0201f, 0.0011f},  {0.0428f, -0.0012f, -0.0036f},
    {0.0817f, 0.0765f, 0.0749f},  {-0.1264f, -0.0522f, -0.1103f}, {-0.0280f, -0.0881f, -0.0499f},
    {-0.1262f, -0.0982f, -0.0778f}};
static const float flux_bias[3] = {-0.0329f, -0.0718f, -0.0851f};

static bool near(float a, float b) { return fabsf(a - b) < 1e-4f; }

/* Told apart as ComfyUI's model files tell them: channels and scaling. */
static latent_space space_of(const ld_vae_config *cfg)
{
    if (cfg->latent_channels == 4)
        return near(cfg->scaling_factor, 0.13025f)
                   ? (latent_space){"sdxl", 4, sdxl_factors, sdxl_bias}
                   : (latent_space){"sd1", 4, sd1_factors, NULL};
    if (cfg->latent_channels == 16 && cfg->has_shift_factor && near(cfg->shift_factor, 0.1159f))
        return (latent_space){"flux", 16, flux_factors, flux_bias};
    if (cfg->latent_channels == 16 && cfg->has_shift_factor && near(cfg->shift_factor, 0.0609f))
        return (latent_space){"sd3", 16, sd3_factors, sd3_bias};
    return (latent_space){"channels", 0, NULL, NULL};
}

const char *ld_preview_space(const ld_model *model)
{
    return space_of(ld_model_config(model)).name;
}

static uint8_t to_byte(float v) /* ComfyUI's ((v + 1) / 2).clamp(0, 1) * 255 */
{
    const float u = (v + 1.0f) * 0.5f;
    return (uint8_t)(!(u > 0) ? 0 : u >= 1 ? 255 : u * 255.0f); /* NaN: 0 */
}

/* A space latentd has no factors for: the first three channels (or as many
 * as there are), each stretched from its own minimum to its maximum. */
static void preview_channels(const ld_vae_config *cfg, const float *latents, size_t plane,
                             uint8_t *rgb)
{
    for (int c = 0; c < 3; c++) {
        const float *ch = latents + (size_t)(c < cfg->latent_channels ? c : 0) * plane;
        float lo = INFINITY, hi = -INFINITY; /* fminf and fmaxf pass NaN over */
        for (size_t i = 0; i < plane; i++) {
            lo = fminf(lo, ch[i]);
            hi = fmaxf(hi, ch[i]);
        }
        const float span = hi > lo ? hi - lo : 1.0f;
        for (size_t i = 0; i < plane; i++) {
            const float u = (ch[i] - lo) / span; /* in [0, 1], or NaN */
            rgb[i * 3 + c] = (uint8_t)(u >= 0 && u <= 1 ? u * 255.0f + 0.5f : 0);
        }
    }
}

void ld_preview_rgb(const ld_model *model, const float *latents, int lh, int lw, uint8_t *rgb)
{
    const ld_vae_config *cfg = ld_model_config(model);
    const latent_space space = space_of(cfg);
    const size_t plane = (size_t)lh * lw;
    if (!space.factors) {
        preview_channels(cfg, latents, plane, rgb);
        return;
    }
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            float v = space.bias ? space.bias[c] : 0.0f;
            for (int k = 0; k < space.channels; k++)
                v += latents[k * plane + i] * space.factors[k][c];
            rgb[i * 3 + c] = to_byte(v);
        }
}

typedef struct {
    uint8_t *data;
    size_t len, cap;
    bool failed;
} png_sink;

static void sink_write(png_structp png, png_bytep data, png_size_t len)
{
    png_sink *s = png_get_io_ptr(png);
    if (s->failed)
        return;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->len + len)
            cap *= 2;
        uint8_t *grown = realloc(s->data, cap);
        if (!grown) {
            s->failed = true;
            return;
        }
        s->data = grown;
        s->cap = cap;
    }
    memcpy(s->data + s->len, data, len);
    s->len += len;
}

static void sink_flush(png_structp png) { (void)png; }

/* rgb [h, w, 3] as an 8-bit RGB PNG. */
static int encode_png(const uint8_t *rgb, int width, int height, ld_out_blob *out, char *err)
{
    png_sink sink = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return ld_fail(err, LD_ENOMEM, "out of memory for a PNG");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(sink.data);
        return ld_fail(err, LD_ENOMEM, "libpng could not write the preview");
    }
    png_set_write_fn(png, &sink, sink_write, sink_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (sink.failed) {
        free(sink.data);
        return ld_fail(err, LD_ENOMEM, "out of memory for a PNG");
    }
    blob_take(out, sink.data, sink.len, "image/png");
    return LD_OK;
}

/* The images' previews side by side, at the latents' size. */
static int render_png(const ld_model *model, const ld_result *results, int n, ld_out_blob *out,
                      char *err)
{
    const int lh = results[0].lh, lw = results[0].lw, width = lw * n;
    uint8_t *strip = malloc((size_t)lh * width * 3), *one = malloc((size_t)lh * lw * 3);
    int rc = strip && one ? LD_OK : ld_fail(err, LD_ENOMEM, "out of memory for a preview");
    for (int i = 0; rc == LD_OK && i < n; i++) {
        ld_preview_rgb(model, ld_result_tensor(&results[i], LD_KIND_LATENTS, NULL), lh, lw, one);
        for (int y = 0; y < lh; y++)
            memcpy(strip + ((size_t)y * width + (size_t)i * lw) * 3, one + (size_t)y * lw * 3,
                   (size_t)lw * 3);
    }
    if (rc == LD_OK)
        rc = encode_png(strip, width, lh, out, err);
    free(strip);
    free(one);
    return rc;
}

/* ---------------- dispatch ---------------- */

int ld_render(const ld_model *model, const ld_result *results, int n, const ld_out_opts *o,
              ld_out_blob *out, char *err)
{
    assert(n > 0 && results);
    memset(out, 0, sizeof *out);
    if (o->format != LD_OUT_JSON && o->format != LD_OUT_SAFETENSORS && !same_size(results, n))
        return ld_fail(err, LD_EUNSUPPORTED, "format=%s holds one array: send images of one "
                       "size, or ask for json or safetensors", ld_out_format_name(o->format));
    switch (o->format) {
    case LD_OUT_SAFETENSORS: return render_safetensors(model, results, n, o, out, err);
    case LD_OUT_NPY: return render_npy(results, n, o, out, err);
    case LD_OUT_COMFYUI: return render_comfyui(model, results, n, o, out, err);
    case LD_OUT_PNG: return render_png(model, results, n, out, err);
    case LD_OUT_RAW: return render_raw(results, n, o, out, err);
    default:
        return render_json(model, results, n, o, out) == LD_OK
                   ? LD_OK : ld_fail(err, LD_ENOMEM, "out of memory");
    }
}
