/* Checkpoints that are corrupt or do not match their config are refused with
 * a message naming the file and the tensor; nothing crashes or leaks. */
#include "latentd/encoder.h"
#include "latentd/safetensors.h"
#include "testutil.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *dir;
static char weights[4200], config[4200];

static void setup(void)
{
    dir = make_temp_dir();
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.json", dir);
}

static void teardown(void)
{
    remove_temp_dir(dir);
}

static void copy_file(const char *from, const char *to)
{
    size_t len;
    uint8_t *data = read_all(from, &len);
    write_all(to, data, len);
    free(data);
}

static void assert_load_fails(const char *path, int want, const char *needle1,
                              const char *needle2)
{
    char err[LD_ERR_LEN] = "";
    ld_model *m = NULL;
    int rc = ld_model_load(path, NULL, &m, err);
    ck_assert_msg(rc == want, "want %d got %d: %s", want, rc, err);
    ck_assert_ptr_null(m);
    if (needle1)
        ck_assert_msg(strstr(err, needle1) != NULL, "no '%s' in: %s", needle1, err);
    if (needle2)
        ck_assert_msg(strstr(err, needle2) != NULL, "no '%s' in: %s", needle2, err);
}

/* Rewrite a model with one tensor left out, through the writer. */
static void write_without(const char *src, const char *skip)
{
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_int_eq(ld_st_open(src, &f, err), LD_OK);
    size_t n = ld_st_count(f), kept = 0;
    ld_st_out *outs = calloc(n, sizeof *outs);
    float **bufs = calloc(n, sizeof *bufs);
    for (size_t i = 0; i < n; i++) {
        const ld_st_tensor *t = ld_st_at(f, i);
        if (strcmp(t->name, skip) == 0)
            continue;
        bufs[kept] = malloc(t->numel * sizeof(float) + 1);
        ck_assert_int_eq(ld_st_to_f32(f, t, bufs[kept], err), LD_OK);
        outs[kept] = (ld_st_out){t->name, t->ndim, {0}, bufs[kept]};
        memcpy(outs[kept].shape, t->shape, sizeof t->shape);
        kept++;
    }
    ck_assert_uint_eq(kept, n - 1);
    ck_assert_int_eq(ld_st_write(weights, outs, kept, NULL, 0, err), LD_OK);
    for (size_t i = 0; i < kept; i++)
        free(bufs[i]);
    free(bufs);
    free(outs);
    ld_st_close(f);
}

START_TEST(missing_tensor_is_named)
{
    copy_file(fixture("models/tiny-sd/config.json"), config);
    write_without(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"),
                  "encoder.mid_block.attentions.0.to_k.bias");
    assert_load_fails(dir, LD_EFORMAT, "encoder.mid_block.attentions.0.to_k.bias", weights);
    /* the decoder is not needed: leaving one of its tensors out is fine */
    write_without(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"),
                  "decoder.conv_in.weight");
    char err[LD_ERR_LEN];
    ld_model *m;
    ck_assert_msg(ld_model_load(dir, NULL, &m, err) == LD_OK, "%s", err);
    ld_model_free(m);
}
END_TEST

START_TEST(config_that_does_not_match_the_tensors)
{
    /* tiny-noattn's config (3 levels, 8 groups) beside tiny-sd's weights */
    copy_file(fixture("models/tiny-noattn/config.json"), config);
    copy_file(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"), weights);
    assert_load_fails(dir, LD_EFORMAT, "shape", "the config needs");
    /* an LDM single file with a config for another architecture beside it */
    char single[4300];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    copy_file(fixture("models/tiny-sd-ldm/model.safetensors"), single);
    copy_file(fixture("models/tiny-flux16/config.json"), config);
    assert_load_fails(single, LD_EFORMAT, "encoder.down.0.block", single);
}
END_TEST

START_TEST(bad_configs)
{
    copy_file(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"), weights);
    const struct {
        const char *json;
        int rc;
        const char *needle;
    } cases[] = {
        {"{\"block_out_channels\": [32, 64", LD_EFORMAT, "config.json"},
        {"[1]", LD_EFORMAT, "not a JSON object"},
        {"{\"_class_name\": \"UNet2DConditionModel\", \"block_out_channels\": [32]}",
         LD_EUNSUPPORTED, "AutoencoderKL"},
        {"{\"block_out_channels\": []}", LD_EFORMAT, "block_out_channels"},
        {"{\"block_out_channels\": [32, 64, 64, 64], \"layers_per_block\": -1}", LD_EFORMAT,
         "layers_per_block"},
        {"{\"block_out_channels\": [32, 64, 64, 64], \"norm_num_groups\": 5}", LD_EFORMAT,
         "norm_num_groups"},
        {"{\"block_out_channels\": [32, 64, 64, 64], \"latents_mean\": [1, 2], "
         "\"latents_std\": [1, 2]}", LD_EFORMAT, "latents_mean"},
        {"{\"block_out_channels\": [32, 64, 64, 64], \"scaling_factor\": \"big\"}", LD_EFORMAT,
         "scaling_factor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_all(config, cases[i].json, strlen(cases[i].json));
        assert_load_fails(dir, cases[i].rc, cases[i].needle, NULL);
    }
}
END_TEST

/* A single-file checkpoint whose every channel count is 0: each tensor is empty,
 * so the shapes agree with one another and the file is a header alone.  The
 * architecture read off it must be refused, not encoded with (it divided by
 * zero). */
START_TEST(zero_channel_checkpoint)
{
    static const char *const convs[] = {
        "encoder.conv_in", "encoder.down_blocks.0.resnets.0.conv1",
        "encoder.down_blocks.0.resnets.0.conv2", "encoder.mid_block.resnets.0.conv1",
        "encoder.mid_block.resnets.0.conv2", "encoder.mid_block.resnets.1.conv1",
        "encoder.mid_block.resnets.1.conv2", "encoder.conv_out"};
    static const char *const norms[] = {
        "encoder.down_blocks.0.resnets.0.norm1", "encoder.down_blocks.0.resnets.0.norm2",
        "encoder.mid_block.resnets.0.norm1", "encoder.mid_block.resnets.0.norm2",
        "encoder.mid_block.resnets.1.norm1", "encoder.mid_block.resnets.1.norm2",
        "encoder.conv_norm_out"};
    char names[2 * 15][96];
    ld_st_out outs[2 * 15];
    size_t n = 0;
    for (size_t i = 0; i < 8; i++) {
        const int64_t in = i == 0 ? 3 : 0;
        snprintf(names[n], sizeof names[n], "%s.weight", convs[i]);
        outs[n] = (ld_st_out){names[n], 4, {0, in, 3, 3}, NULL};
        n++;
        snprintf(names[n], sizeof names[n], "%s.bias", convs[i]);
        outs[n] = (ld_st_out){names[n], 1, {0}, NULL};
        n++;
    }
    for (size_t i = 0; i < 7; i++)
        for (int b = 0; b < 2; b++) {
            snprintf(names[n], sizeof names[n], "%s.%s", norms[i], b ? "bias" : "weight");
            outs[n] = (ld_st_out){names[n], 1, {0}, NULL};
            n++;
        }
    char err[LD_ERR_LEN], single[4300];
    snprintf(single, sizeof single, "%s/zero.safetensors", dir);
    ck_assert_int_eq(ld_st_write(single, outs, n, NULL, 0, err), LD_OK);
    assert_load_fails(single, LD_EFORMAT, "at least 1", single);
}
END_TEST

START_TEST(unsupported_dtype_on_a_needed_tensor)
{
    copy_file(fixture("models/tiny-sd/config.json"), config);
    size_t len;
    uint8_t *data = read_all(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"), &len);
    /* relabel conv_in's F32 bytes as I32: same size, so only the dtype is wrong */
    const char *needle = "\"encoder.conv_in.weight\":{\"dtype\":\"F32\"";
    uint8_t *at = memmem(data, len, needle, strlen(needle));
    ck_assert_ptr_nonnull(at);
    memcpy(at + strlen(needle) - 4, "I32", 3);
    write_all(weights, data, len);
    free(data);
    assert_load_fails(dir, LD_EUNSUPPORTED, "encoder.conv_in.weight", "I32");
}
END_TEST

START_TEST(truncated_and_missing_files)
{
    copy_file(fixture("models/tiny-sd/config.json"), config);
    size_t len;
    uint8_t *data = read_all(fixture("models/tiny-sd/diffusion_pytorch_model.safetensors"), &len);
    write_all(weights, data, len / 2);
    free(data);
    assert_load_fails(dir, LD_EFORMAT, weights, "truncated");
    unlink(weights);
    assert_load_fails(dir, LD_EIO, "diffusion_pytorch_model.safetensors", NULL);
    assert_load_fails("/nonexistent/model", LD_EIO, "/nonexistent/model", NULL);
    /* a safetensors file that holds no VAE */
    const char *hdr = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    uint8_t buf[128] = {0};
    buf[0] = (uint8_t)strlen(hdr);
    memcpy(buf + 8, hdr, strlen(hdr));
    char single[4300];
    snprintf(single, sizeof single, "%s/unet.safetensors", dir);
    unlink(config);
    write_all(single, buf, 8 + strlen(hdr) + 4);
    assert_load_fails(single, LD_EFORMAT, "no VAE encoder", single);
}
END_TEST

/* Byte flips anywhere in the header of a full checkpoint: the load fails
 * cleanly or succeeds; never a crash or a leak. */
START_TEST(survives_corrupted_checkpoints)
{
    copy_file(fixture("models/tiny-noattn/config.json"), config);
    size_t len;
    uint8_t *data = read_all(fixture("models/tiny-noattn/diffusion_pytorch_model.safetensors"), &len);
    uint32_t s = 99;
    for (int round = 0; round < 60; round++) {
        uint8_t *copy = malloc(len);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, data, len);
        s = s * 1103515245u + 12345u;
        copy[8 + (s >> 8) % 20000] ^= (uint8_t)(1u << (s % 8));
        write_all(weights, copy, len);
        free(copy);
        char err[LD_ERR_LEN];
        ld_model *m = NULL;
        if (ld_model_load(dir, NULL, &m, err) == LD_OK)
            ld_model_free(m);
        else
            ck_assert_msg(err[0] != '\0', "a failure without a message");
    }
    free(data);
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("model errors");
    TCase *tc = tcase_create("load");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, missing_tensor_is_named);
    tcase_add_test(tc, config_that_does_not_match_the_tensors);
    tcase_add_test(tc, bad_configs);
    tcase_add_test(tc, zero_channel_checkpoint);
    tcase_add_test(tc, unsupported_dtype_on_a_needed_tensor);
    tcase_add_test(tc, truncated_and_missing_files);
    tcase_add_test(tc, survives_corrupted_checkpoints);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(errors_suite());
}
