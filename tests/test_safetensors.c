/* The safetensors reader on real fixtures and on files that lie; the npy
 * header reader (both of its users) on headers numpy would read otherwise. */
#include "latentd/npy.h"
#include "latentd/safetensors.h"
#include "latentd/tensor_input.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *tmp_dir;

static void setup(void) { tmp_dir = make_temp_dir(); }
static void teardown(void)
{
    remove_temp_dir(tmp_dir);
}

static const char *tmp_path(const char *name)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

/* A file of: 8-byte length of `header`, `header`, then `data_len` bytes. */
static const char *make_file(const char *header, size_t data_len)
{
    const size_t hlen = strlen(header);
    uint8_t *buf = calloc(1, 8 + hlen + data_len);
    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    const char *path = tmp_path("x.safetensors");
    write_all(path, buf, 8 + hlen + data_len);
    free(buf);
    return path;
}

static void assert_refused(const char *path, int want, const char *needle)
{
    char err[LD_ERR_LEN] = "";
    ld_st_file *f = (ld_st_file *)0x1;
    int rc = ld_st_open(path, &f, err);
    ck_assert_msg(rc == want, "want %d got %d (%s)", want, rc, err);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err, path) != NULL, "message names no file: %s", err);
    if (needle)
        ck_assert_msg(strstr(err, needle) != NULL, "message lacks '%s': %s", needle, err);
}

START_TEST(reads_a_full_checkpoint_with_foreign_tensors)
{
    char err[LD_ERR_LEN];
    ld_st_file *f;
    const char *path = fixture("models/tiny-sd-ldm/model-prefixed.safetensors");
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    ck_assert_uint_eq(ld_st_count(f), 185); /* 180 VAE tensors + 5 that are not the VAE's */
    const ld_st_tensor *ids = ld_st_find(f, "cond_stage_model.transformer.text_model.embeddings.position_ids");
    ck_assert_ptr_nonnull(ids);
    ck_assert_int_eq(ids->dtype, LD_DT_I64);
    ck_assert_int_eq(ids->ndim, 2);
    ck_assert_int_eq(ids->shape[1], 77);
    const ld_st_tensor *scalar = ld_st_find(f, "model_ema.num_updates");
    ck_assert_ptr_nonnull(scalar);
    ck_assert_int_eq(scalar->dtype, LD_DT_I32);
    ck_assert_int_eq(scalar->ndim, 0);
    ck_assert_uint_eq(scalar->numel, 1);
    float tmp[77 * 2];
    ck_assert_int_eq(ld_st_to_f32(f, ids, tmp, err), LD_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err, "I64"));
    ld_st_close(f);
}
END_TEST

/* The memory reader sees what the file reader sees, and never reads outside
 * the bytes it is given. */
START_TEST(reads_from_memory_as_from_a_file)
{
    char err[LD_ERR_LEN];
    size_t len;
    uint8_t *raw = read_all(fixture("models/tiny-sd-fp16/diffusion_pytorch_model.safetensors"),
                            &len);
    ld_st_file *f;
    ck_assert_msg(ld_st_open_memory(raw, len, "upload", &f, err) == LD_OK, "%s", err);
    ck_assert_str_eq(ld_st_path(f), "upload");
    const ld_st_tensor *t = ld_st_find(f, "encoder.conv_in.bias");
    ck_assert_ptr_nonnull(t);
    ck_assert(t->data >= raw && t->data + t->nbytes <= raw + len);
    float bias[32];
    ck_assert_uint_eq(t->numel, 32);
    ck_assert_int_eq(ld_st_to_f32(f, t, bias, err), LD_OK);
    ld_st_close(f);
    for (size_t cut = 0; cut < 8; cut++) {
        f = (ld_st_file *)0x1;
        ck_assert_int_eq(ld_st_open_memory(raw, cut, "short", &f, err), LD_EFORMAT);
        ck_assert_ptr_null(f);
        ck_assert_ptr_nonnull(strstr(err, "too short"));
    }
    ck_assert_int_eq(ld_st_open_memory(raw, len - 1, "cut", &f, err), LD_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err, "cut"));
    free(raw);
}
END_TEST

START_TEST(half_precision_converts_exactly)
{
    ck_assert_float_eq(ld_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(ld_f16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(ld_f16_to_f32(0x7bff), 65504.0f);
    ck_assert_float_eq(ld_f16_to_f32(0x0001), 5.9604644775390625e-8f); /* smallest subnormal */
    ck_assert_float_eq(ld_f16_to_f32(0x03ff), 6.09755516052246094e-5f); /* largest subnormal */
    ck_assert_float_eq(ld_bf16_to_f32(0x3f80), 1.0f);
    ck_assert_float_eq(ld_bf16_to_f32(0xc2f7), -123.5f);
}
END_TEST

START_TEST(writer_round_trips)
{
    char err[LD_ERR_LEN];
    const float a[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
    const float b[2] = {42, 43};
    ld_st_out outs[2] = {{"alpha", 2, {2, 3}, a}, {"beta.1", 1, {2}, b}};
    ld_st_meta meta[1] = {{"model", "tiny"}};
    const char *path = tmp_path("rt.safetensors");
    ck_assert_int_eq(ld_st_write(path, outs, 2, meta, 1, err), LD_OK);
    size_t len;
    uint8_t *raw = read_all(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    ck_assert_uint_eq(hlen % 8, 0); /* header padded to 8 as the spec wants */
    free(raw);
    ld_st_file *f;
    ck_assert_int_eq(ld_st_open(path, &f, err), LD_OK);
    ck_assert_str_eq(ld_st_metadata(f, "model"), "tiny");
    float got[6];
    const ld_st_tensor *t = ld_st_find(f, "alpha");
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_int_eq(ld_st_to_f32(f, t, got, err), LD_OK);
    ck_assert_mem_eq(got, a, sizeof a);
    ck_assert_int_eq(ld_st_to_f32(f, ld_st_find(f, "beta.1"), got, err), LD_OK);
    ck_assert_mem_eq(got, b, sizeof b);
    ld_st_close(f);
}
END_TEST

START_TEST(refuses_short_and_oversized_headers)
{
    const char *path = tmp_path("short.safetensors");
    write_all(path, "\x10\0\0", 3);
    assert_refused(path, LD_EFORMAT, "too short");
    /* header length far beyond the file */
    write_all(path, "\xff\xff\xff\xff\x00\x00\x00\x00{}", 10);
    assert_refused(path, LD_EFORMAT, "header length");
    write_all(path, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    assert_refused(path, LD_EFORMAT, "header length");
    assert_refused(tmp_path("missing.safetensors"), LD_EIO, "cannot open");
}
END_TEST

START_TEST(refuses_headers_that_lie)
{
    static const struct {
        const char *header;
        size_t data;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "JSON"},
        {"[1,2]", 0, "not a JSON object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "do not hold"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "do not hold"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "dimension"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,8]}}", 8, "overflow"},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets"},
        {"{\"a\":[1]}", 8, "not an object"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused(make_file(cases[i].header, cases[i].data), LD_EFORMAT, cases[i].needle);
}
END_TEST

/* Cut a real checkpoint anywhere: every cut loses header or data bytes, and
 * the reader must say so rather than read past the end. */
START_TEST(refuses_every_truncation)
{
    size_t len;
    uint8_t *full = read_all(fixture("models/tiny-noattn/diffusion_pytorch_model.safetensors"), &len);
    const char *path = tmp_path("cut.safetensors");
    const size_t cuts[] = {0, 1, 7, 8, 9, 100, 1000, 5000, len / 2, len - 4, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_all(path, full, cuts[i]);
        assert_refused(path, LD_EFORMAT, NULL);
    }
    free(full);
}
END_TEST

/* Random byte flips in the header: refused cleanly or read, never a crash
 * (the sanitizer and valgrind runs watch for out-of-bounds reads). */
START_TEST(survives_flipped_header_bytes)
{
    size_t len;
    uint8_t *full = read_all(fixture("models/tiny-noattn/diffusion_pytorch_model.safetensors"), &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | full[i];
    const char *path = tmp_path("flip.safetensors");
    uint32_t s = 12345;
    for (int round = 0; round < 300; round++) {
        uint8_t *copy = malloc(len);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, full, len);
        for (int k = 0; k < 3; k++) {
            s = s * 1103515245u + 12345u;
            size_t at = (s >> 8) % (8 + hlen);
            copy[at] ^= (uint8_t)(1u << (s % 8));
        }
        write_all(path, copy, len);
        free(copy);
        char err[LD_ERR_LEN];
        ld_st_file *f = NULL;
        if (ld_st_open(path, &f, err) == LD_OK) {
            float *buf = NULL;
            for (size_t i = 0; i < ld_st_count(f); i++) { /* touch every tensor's bytes */
                const ld_st_tensor *t = ld_st_at(f, i);
                buf = realloc(buf, t->numel * sizeof(float) + 4);
                ck_assert_ptr_nonnull(buf);
                (void)ld_st_to_f32(f, t, buf, err);
            }
            free(buf);
            ld_st_close(f);
        }
    }
    free(full);
}
END_TEST


/* ---- npy headers ---- */

#define NPY_FLOATS 12 /* every header below describes 12 float32 values */

/* An npy 1.0 file of `dict`, padded as numpy pads, then NPY_FLOATS floats 0..11. */
static uint8_t *npy_file(const char *dict, size_t *len)
{
    const size_t dict_len = strlen(dict);
    const size_t header = (10 + dict_len + 1 + 63) / 64 * 64;
    *len = header + NPY_FLOATS * sizeof(float);
    uint8_t *buf = malloc(*len);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)((header - 10) & 0xff);
    buf[9] = (uint8_t)((header - 10) >> 8);
    memset(buf + 10, ' ', header - 10);
    memcpy(buf + 10, dict, dict_len);
    buf[header - 1] = '\n';
    for (int i = 0; i < NPY_FLOATS; i++) {
        const float v = (float)i;
        memcpy(buf + header + i * sizeof v, &v, sizeof v);
    }
    return buf;
}

/* Both readers (tensor input, and the one that checks result files) take it. */
static void assert_npy_read(const char *dict, int height, int width)
{
    size_t len;
    uint8_t *buf = npy_file(dict, &len);
    char err[LD_ERR_LEN] = "";
    ld_tensor_batch batch;
    ck_assert_msg(ld_tensor_from_npy(buf, len, &batch, err) == LD_OK, "%s: %s", dict, err);
    ck_assert_int_eq(batch.n, 1);
    ck_assert_int_eq(batch.height, height);
    ck_assert_int_eq(batch.width, width);
    ck_assert_int_eq(batch.dtype, LD_DT_F32);
    int ndim;
    int64_t shape[LD_NPY_MAX_DIMS];
    size_t offset;
    ck_assert_msg(ld_npy_check(buf, len, len, &ndim, shape, &offset, err) == LD_OK, "%s: %s",
                  dict, err);
    ck_assert_int_eq(ndim, 4);
    ck_assert_uint_eq(offset, len - NPY_FLOATS * sizeof(float));
    free(buf);
}

/* Both readers refuse it as malformed, saying `needle`. */
static void assert_npy_refused(const char *dict, const char *needle)
{
    size_t len;
    uint8_t *buf = npy_file(dict, &len);
    char err[LD_ERR_LEN] = "";
    ld_tensor_batch batch;
    int rc = ld_tensor_from_npy(buf, len, &batch, err);
    ck_assert_msg(rc == LD_EFORMAT && strstr(err, needle), "%s: %d %s", dict, rc, err);
    int ndim;
    int64_t shape[LD_NPY_MAX_DIMS];
    err[0] = '\0';
    rc = ld_npy_check(buf, len, len, &ndim, shape, NULL, err);
    ck_assert_msg(rc == LD_EFORMAT && strstr(err, needle), "%s: %d %s", dict, rc, err);
    free(buf);
}

START_TEST(npy_headers_as_numpy_writes_them)
{
    assert_npy_read("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), }", 2, 2);
    /* no trailing comma, other blanks, keys in another order: a dict all the same */
    assert_npy_read("{'shape':(1,3,1,4),'fortran_order':False,'descr':'<f4'}", 1, 4);
    assert_npy_read("{ 'descr' : '<f4' ,\n 'fortran_order' : False , 'shape' : ( 1, 3, 4, 1, ) }",
                    4, 1);
}
END_TEST

/* numpy reads a dict literal, where the last of a repeated key wins: a reader
 * that took the first (as latentd's did) saw other values than numpy.  Each
 * file here is one numpy reads, and one the first-wins reading took too, as
 * a different array: a transposed one, another dtype, another shape. */
START_TEST(npy_headers_with_a_key_twice_are_refused)
{
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'fortran_order': True, "
                       "'shape': (1, 3, 2, 2), }", "'fortran_order' twice");
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), "
                       "'fortran_order': True, }", "'fortran_order' twice");
    assert_npy_refused("{'descr': '<f4', 'descr': '<f2', 'fortran_order': False, "
                       "'shape': (1, 3, 2, 2), }", "'descr' twice");
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), "
                       "'shape': (1, 3, 4, 1), }", "'shape' twice");
    assert_npy_refused("{\"shape\": (1, 3, 2, 2), 'descr': '<f4', 'fortran_order': False, "
                       "'shape': (1, 3, 1, 4)}", "'shape' twice");
}
END_TEST

/* What numpy's header reader refuses, refused here too, and text inside a
 * value is never taken for a key. */
START_TEST(npy_headers_numpy_refuses)
{
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), "
                       "'extra': 1}", "'extra'");
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), } x",
                       "after the header");
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), ",
                       "npy:");
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2)) }",
                       "npy:");
    assert_npy_refused("{'descr': , 'fortran_order': False, 'shape': (1, 3, 2, 2)}", "no value");
    assert_npy_refused("['descr', '<f4']", "not a dict");
    /* a key's text inside a string value is part of that value */
    assert_npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), "
                       "'x': \"'shape': (1, 3, 4, 1)\"}", "'x'");
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("reader");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, reads_a_full_checkpoint_with_foreign_tensors);
    tcase_add_test(tc, reads_from_memory_as_from_a_file);
    tcase_add_test(tc, half_precision_converts_exactly);
    tcase_add_test(tc, writer_round_trips);
    tcase_add_test(tc, refuses_short_and_oversized_headers);
    tcase_add_test(tc, refuses_headers_that_lie);
    tcase_add_test(tc, refuses_every_truncation);
    tcase_add_test(tc, survives_flipped_header_bytes);
    suite_add_tcase(s, tc);
    tc = tcase_create("npy");
    tcase_add_test(tc, npy_headers_as_numpy_writes_them);
    tcase_add_test(tc, npy_headers_with_a_key_twice_are_refused);
    tcase_add_test(tc, npy_headers_numpy_refuses);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(safetensors_suite());
}
