/* The renderer, apart from HTTP: each format of a small synthetic result is
 * parsed back (jansson for JSON, the project's safetensors reader, the .npy
 * header by hand as NumPy's format spec describes it) and must hold exactly
 * the outputs asked for, with the values put in; seeds survive at every
 * magnitude; error bodies are valid JSON whatever bytes the message holds. */
#include "response.h"
#include "testutil.h"

#include <check.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "latentd/base64.h"

#define C 4 /* tiny-sd's latent channels */

static ld_model *model;

static void load_model(void)
{
    char err[LD_ERR_LEN];
    ck_assert_msg(ld_model_load(fixture("models/tiny-sd"), NULL, &model, err) == LD_OK, "%s",
                  err);
}

static void free_model(void)
{
    ld_model_free(model);
    model = NULL;
}

/* ---- synthetic results: every value says which kind, image and element it is ---- */
enum { LATENTS, MEAN, LOGVAR, MOMENTS };

static float value(int kind, int item, size_t i)
{
    return (float)(kind * 1000000 + item * 10000) + (float)i * 0.5f;
}

static size_t kind_numel(int kind, int lh, int lw)
{
    return (size_t)(kind == MOMENTS ? 2 * C : C) * lh * lw;
}

/* One block as ld_result holds it: latents, mean, logvar, then moments. */
static ld_result make_item(int item, int height, int width)
{
    ld_result it = {.width = width, .height = height, .channels = C, .lh = height / 8,
                    .lw = width / 8};
    const size_t per = kind_numel(LATENTS, it.lh, it.lw);
    it.data = malloc(5 * per * sizeof(float));
    ck_assert_ptr_nonnull(it.data);
    for (int k = 0; k < 4; k++) {
        float *slot = it.data + (size_t)k * per;
        for (size_t i = 0; i < kind_numel(k, it.lh, it.lw); i++)
            slot[i] = value(k, item, i);
    }
    return it;
}

typedef struct {
    ld_result items[3];
    srv_results res;
} fixture_results;

/* n images of 16x24 (latents 2x3); with mixed, the last one is 24x16. */
static void make_results(fixture_results *f, int n, bool mixed)
{
    for (int i = 0; i < n; i++)
        f->items[i] = mixed && i == n - 1 ? make_item(i, 24, 16) : make_item(i, 16, 24);
    f->res = (srv_results){.n_items = n, .items = f->items, .deterministic = true, .center = true};
}

static void free_results(fixture_results *f)
{
    for (int i = 0; i < f->res.n_items; i++)
        ld_result_free(&f->items[i]);
}

static srv_options options(ld_out_format format, unsigned outputs)
{
    srv_options o;
    srv_options_defaults(&o);
    o.format = format;
    if (outputs)
        o.outputs = outputs;
    return o;
}

static srv_body render(const srv_results *res, const srv_options *o)
{
    srv_body body;
    char err[LD_ERR_LEN] = "";
    ck_assert_msg(srv_render_result(model, res, o, &body, err) == LD_OK, "%s", err);
    ck_assert_ptr_nonnull(body.data);
    return body;
}

/* Images [first, first+count) of one kind, stacked, must equal data. */
static void assert_values(const float *data, int kind, int first, int count, int lh, int lw)
{
    const size_t per = kind_numel(kind, lh, lw);
    for (int m = 0; m < count; m++)
        for (size_t i = 0; i < per; i++)
            ck_assert_float_eq(data[m * per + i], value(kind, first + m, i));
}

/* ---- JSON ---- */
static json_t *parse_json(const srv_body *body)
{
    ck_assert_str_eq(body->content_type, "application/json");
    json_error_t jerr;
    json_t *root = json_loadb(body->data, body->len, 0, &jerr);
    ck_assert_msg(root != NULL, "%s", jerr.text);
    return root;
}

static void assert_shape(json_t *shape, int n, int c, int h, int w)
{
    ck_assert_int_eq(json_array_size(shape), 4);
    const int want[4] = {n, c, h, w};
    for (int d = 0; d < 4; d++)
        ck_assert_int_eq(json_integer_value(json_array_get(shape, d)), want[d]);
}

/* {"shape", "dtype", "data": base64 of little-endian float32} */
static void assert_json_tensor(json_t *t, int kind, int first, int count, int lh, int lw)
{
    ck_assert_ptr_nonnull(t);
    assert_shape(json_object_get(t, "shape"), count, kind == MOMENTS ? 2 * C : C, lh, lw);
    ck_assert_str_eq(json_string_value(json_object_get(t, "dtype")), "float32");
    const char *b64 = json_string_value(json_object_get(t, "data"));
    ck_assert_ptr_nonnull(b64);
    uint8_t *raw;
    size_t len;
    char err[LD_ERR_LEN];
    ck_assert_int_eq(ld_base64_decode(b64, strlen(b64), &raw, &len, err), LD_OK);
    ck_assert_uint_eq(len, count * kind_numel(kind, lh, lw) * sizeof(float));
    assert_values((const float *)raw, kind, first, count, lh, lw);
    free(raw);
}

static const char *const names[] = {"latents", "mean", "logvar", "moments"};

START_TEST(json_holds_exactly_the_outputs_named)
{
    load_model();
    fixture_results f;
    make_results(&f, 2, false);
    for (unsigned outputs = 1; outputs < 16; outputs++) {
        const srv_options o = options(LD_OUT_JSON, outputs);
        srv_body body = render(&f.res, &o);
        json_t *root = parse_json(&body);
        ck_assert_int_eq(json_integer_value(json_object_get(root, "latent_channels")), C);
        ck_assert(json_is_true(json_object_get(root, "deterministic")));
        ck_assert_ptr_null(json_object_get(root, "seed"));
        for (int k = 0; k < 4; k++) {
            json_t *t = json_object_get(root, names[k]);
            if (outputs & (1u << k))
                assert_json_tensor(t, k, 0, 2, 2, 3);
            else
                ck_assert_msg(t == NULL, "outputs %u: %s present", outputs, names[k]);
        }
        json_decref(root);
        free(body.data);
    }
    free_results(&f);
    free_model();
}
END_TEST

START_TEST(json_list_encoding_and_mixed_sizes)
{
    load_model();
    fixture_results f;
    make_results(&f, 3, true);
    srv_options o = options(LD_OUT_JSON, OUT_MEAN);
    o.list_encoding = true;
    srv_body body = render(&f.res, &o);
    json_t *root = parse_json(&body);
    ck_assert_ptr_null(json_object_get(root, "mean")); /* per image instead */
    json_t *results = json_object_get(root, "results");
    ck_assert_int_eq(json_array_size(results), 3);
    for (int i = 0; i < 3; i++) {
        json_t *t = json_object_get(json_array_get(results, i), "mean");
        const int lh = i == 2 ? 3 : 2, lw = i == 2 ? 2 : 3;
        assert_shape(json_object_get(t, "shape"), 1, C, lh, lw);
        json_t *data = json_object_get(t, "data"); /* [1][C][lh][lw] */
        size_t e = 0;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < lh; y++)
                for (int x = 0; x < lw; x++, e++) {
                    json_t *v = json_array_get(
                        json_array_get(json_array_get(json_array_get(data, 0), c), y), x);
                    ck_assert_double_eq(json_real_value(v), value(MEAN, i, e));
                }
        ck_assert_ptr_null(json_object_get(json_array_get(results, i), "latents"));
    }
    json_decref(root);
    free(body.data);
    free_results(&f);
    free_model();
}
END_TEST

/* ---- npy: magic, version 1.0, LE header length, a dict padded to 64 ---- */
static const float *parse_npy(const srv_body *body, long long shape[4])
{
    ck_assert_str_eq(body->content_type, "application/x-npy");
    ck_assert_uint_ge(body->len, 10);
    ck_assert_int_eq(memcmp(body->data, "\x93NUMPY\x01\x00", 8), 0);
    const uint8_t *b = (const uint8_t *)body->data;
    const size_t header_len = b[8] | (size_t)b[9] << 8;
    const size_t data_at = 10 + header_len;
    ck_assert_uint_eq(data_at % 64, 0);
    ck_assert_uint_le(data_at, body->len);
    ck_assert_int_eq(body->data[data_at - 1], '\n');
    char dict[512];
    ck_assert_uint_lt(header_len, sizeof dict);
    memcpy(dict, body->data + 10, header_len);
    dict[header_len] = '\0';
    ck_assert_ptr_nonnull(strstr(dict, "'descr': '<f4'"));
    ck_assert_ptr_nonnull(strstr(dict, "'fortran_order': False"));
    const char *s = strstr(dict, "'shape': (");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(sscanf(s, "'shape': (%lld, %lld, %lld, %lld)", &shape[0], &shape[1],
                            &shape[2], &shape[3]),
                     4);
    ck_assert_uint_eq(body->len - data_at,
                      (size_t)(shape[0] * shape[1] * shape[2] * shape[3]) * sizeof(float));
    return (const float *)(body->data + data_at);
}

static void assert_npy(const fixture_results *f, unsigned outputs, int kind)
{
    const srv_options o = options(LD_OUT_NPY, outputs);
    srv_body body = render(&f->res, &o);
    long long shape[4];
    const float *data = parse_npy(&body, shape);
    ck_assert_int_eq(shape[0], f->res.n_items);
    ck_assert_int_eq(shape[1], kind == MOMENTS ? 2 * C : C);
    ck_assert_int_eq(shape[2], 2);
    ck_assert_int_eq(shape[3], 3);
    assert_values(data, kind, 0, f->res.n_items, 2, 3);
    free(body.data);
}

START_TEST(npy_holds_the_output_named)
{
    load_model();
    fixture_results f;
    make_results(&f, 2, false);
    assert_npy(&f, OUT_LATENTS, LATENTS);
    assert_npy(&f, OUT_MEAN, MEAN); /* this was the scaled latents before */
    assert_npy(&f, OUT_LOGVAR, LOGVAR);
    assert_npy(&f, OUT_MOMENTS, MOMENTS);
    /* several: the first in the order latents, mean, logvar, moments */
    assert_npy(&f, 0, LATENTS); /* the default, latents+mean+logvar */
    assert_npy(&f, OUT_MEAN | OUT_LOGVAR, MEAN);
    assert_npy(&f, OUT_LOGVAR | OUT_MOMENTS, LOGVAR);
    free_results(&f);
    make_results(&f, 3, true);
    const srv_options o = options(LD_OUT_NPY, OUT_MEAN);
    srv_body body;
    char err[LD_ERR_LEN];
    ck_assert_int_eq(srv_render_result(model, &f.res, &o, &body, err), LD_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err, "npy holds one array"));
    free_results(&f);
    free_model();
}
END_TEST

/* ---- safetensors, through the project's checked reader ---- */
typedef struct {
    char *dir, path[4200];
    ld_st_file *file;
} st_opened;

static void open_safetensors(const srv_body *body, st_opened *st)
{
    ck_assert_str_eq(body->content_type, "application/octet-stream");
    st->dir = make_temp_dir();
    snprintf(st->path, sizeof st->path, "%s/out.safetensors", st->dir);
    write_all(st->path, body->data, body->len);
    char err[LD_ERR_LEN];
    ck_assert_msg(ld_st_open(st->path, &st->file, err) == LD_OK, "%s", err);
}

static void close_safetensors(st_opened *st)
{
    ld_st_close(st->file);
    unlink(st->path);
    rmdir(st->dir);
    free(st->dir);
}

static void assert_st_tensor(const ld_st_file *file, const char *name, int kind, int first,
                             int count, int lh, int lw)
{
    const ld_st_tensor *t = ld_st_find(file, name);
    ck_assert_msg(t != NULL, "no %s", name);
    ck_assert_int_eq(t->dtype, LD_DT_F32);
    ck_assert_int_eq(t->ndim, 4);
    ck_assert_int_eq(t->shape[0], count);
    ck_assert_int_eq(t->shape[1], kind == MOMENTS ? 2 * C : C);
    ck_assert_int_eq(t->shape[2], lh);
    ck_assert_int_eq(t->shape[3], lw);
    float *data = malloc(t->numel * sizeof(float));
    char err[LD_ERR_LEN];
    ck_assert_int_eq(ld_st_to_f32(file, t, data, err), LD_OK);
    assert_values(data, kind, first, count, lh, lw);
    free(data);
}

START_TEST(safetensors_holds_exactly_the_outputs_named)
{
    load_model();
    fixture_results f;
    make_results(&f, 2, false);
    const srv_options o = options(LD_OUT_SAFETENSORS, OUT_LOGVAR | OUT_MOMENTS);
    srv_body body = render(&f.res, &o);
    st_opened st;
    open_safetensors(&body, &st);
    ck_assert_uint_eq(ld_st_count(st.file), 2);
    assert_st_tensor(st.file, "logvar", LOGVAR, 0, 2, 2, 3);
    assert_st_tensor(st.file, "moments", MOMENTS, 0, 2, 2, 3);
    ck_assert_str_eq(ld_st_metadata(st.file, "latents"), "mode");
    ck_assert_str_eq(ld_st_metadata(st.file, "seed"), "none");
    close_safetensors(&st);
    free(body.data);
    free_results(&f);
    /* mixed sizes: one set per image */
    make_results(&f, 3, true);
    const srv_options m = options(LD_OUT_SAFETENSORS, OUT_LATENTS);
    body = render(&f.res, &m);
    open_safetensors(&body, &st);
    ck_assert_uint_eq(ld_st_count(st.file), 3);
    assert_st_tensor(st.file, "latents.0", LATENTS, 0, 1, 2, 3);
    assert_st_tensor(st.file, "latents.1", LATENTS, 1, 1, 2, 3);
    assert_st_tensor(st.file, "latents.2", LATENTS, 2, 1, 3, 2);
    close_safetensors(&st);
    free(body.data);
    free_results(&f);
    free_model();
}
END_TEST

/* ---- seeds: unsigned 64-bit, exact at every magnitude ---- */
START_TEST(seeds_survive_at_every_magnitude)
{
    load_model();
    static const uint64_t seeds[] = {0, UINT64_C(1) << 53, (UINT64_C(1) << 53) + 1,
                                     UINT64_C(9223372036854775807),
                                     UINT64_C(9223372036854775808), UINT64_MAX};
    fixture_results f;
    make_results(&f, 1, false);
    f.res.deterministic = false;
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        f.res.seed = seeds[i];
        char decimal[24];
        snprintf(decimal, sizeof decimal, "%" PRIu64, seeds[i]);
        /* JSON: an integer below 2^63, a decimal string from there */
        srv_options o = options(LD_OUT_JSON, OUT_LATENTS);
        srv_body body = render(&f.res, &o);
        char text[40]; /* the bytes on the wire, not just what a parser makes of them */
        snprintf(text, sizeof text, seeds[i] <= INT64_MAX ? "\"seed\":%s," : "\"seed\":\"%s\",",
                 decimal);
        ck_assert_msg(strstr(body.data, text) != NULL, "no %s", text);
        json_t *root = parse_json(&body);
        json_t *seed = json_object_get(root, "seed");
        if (seeds[i] <= INT64_MAX) {
            ck_assert_msg(json_is_integer(seed), "seed %s", decimal);
            ck_assert_uint_eq((uint64_t)json_integer_value(seed), seeds[i]);
        } else {
            ck_assert_msg(json_is_string(seed), "seed %s", decimal);
            ck_assert_str_eq(json_string_value(seed), decimal);
            ck_assert_uint_eq(strtoull(json_string_value(seed), NULL, 10), seeds[i]);
        }
        ck_assert(json_is_false(json_object_get(root, "deterministic")));
        json_decref(root);
        free(body.data);
        /* safetensors metadata: always the decimal string */
        o = options(LD_OUT_SAFETENSORS, OUT_LATENTS);
        body = render(&f.res, &o);
        st_opened st;
        open_safetensors(&body, &st);
        ck_assert_str_eq(ld_st_metadata(st.file, "seed"), decimal);
        ck_assert_str_eq(ld_st_metadata(st.file, "latents"), "sample");
        close_safetensors(&st);
        free(body.data);
    }
    free_results(&f);
    free_model();
}
END_TEST

/* ---- errors: whatever the message holds, the body is JSON ---- */
static char *error_message(const char *message)
{
    srv_body body;
    ck_assert_int_eq(srv_render_error("invalid-request", message, &body), LD_OK);
    json_t *root = parse_json(&body);
    json_t *error = json_object_get(root, "error");
    ck_assert_str_eq(json_string_value(json_object_get(error, "code")), "invalid-request");
    char *text = strdup(json_string_value(json_object_get(error, "message")));
    json_decref(root);
    free(body.data);
    return text;
}

#define FFFD "\xef\xbf\xbd"

START_TEST(error_bodies_are_always_json)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"unknown option '\xff'", "unknown option '" FFFD "'"}, /* ?%ff=1 */
        {"a\nforged line\r", "a" FFFD "forged line" FFFD},
        {"tab\tbell\a del\x7f", "tab" FFFD "bell" FFFD " del" FFFD},
        {"lone \x80 continuation", "lone " FFFD " continuation"},
        {"overlong \xc0\xaf slash", "overlong " FFFD FFFD " slash"},
        {"surrogate \xed\xa0\x80", "surrogate " FFFD FFFD FFFD},
        {"past U+10FFFF \xf4\x90\x80\x80", "past U+10FFFF " FFFD FFFD FFFD FFFD},
        {"cut \xe2\x82", "cut " FFFD FFFD},
        {"fine: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \"quoted\" \\",
         "fine: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \"quoted\" \\"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = error_message(cases[i].in);
        ck_assert_msg(strcmp(got, cases[i].out) == 0, "case %zu: got '%s'", i, got);
        free(got);
    }
    char *got = error_message(NULL);
    ck_assert_str_eq(got, "");
    free(got);
    /* every single byte value, alone in a message */
    for (int b = 1; b < 256; b++) {
        char in[2] = {(char)b, 0};
        free(error_message(in));
    }
}
END_TEST

static Suite *response_suite(void)
{
    Suite *s = suite_create("response");
    TCase *tc = tcase_create("render");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, json_holds_exactly_the_outputs_named);
    tcase_add_test(tc, json_list_encoding_and_mixed_sizes);
    tcase_add_test(tc, npy_holds_the_output_named);
    tcase_add_test(tc, safetensors_holds_exactly_the_outputs_named);
    tcase_add_test(tc, seeds_survive_at_every_magnitude);
    tcase_add_test(tc, error_bodies_are_always_json);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(response_suite());
}
