#include "samplefix.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "latentd/safetensors.h"
#include "testutil.h"

uint64_t parse_u64(const char *text)
{
    char *end;
    errno = 0;
    const unsigned long long v = strtoull(text, &end, 10);
    ck_assert_msg(*text >= '0' && *text <= '9' && !*end && errno == 0, "not a seed: %s", text);
    return (uint64_t)v;
}

/* A metadata value that is a JSON array of strings, into out[max][size]. */
static int metadata_strings(const ld_st_file *f, const char *key, char *out, size_t size,
                            int max)
{
    const char *text = ld_st_metadata(f, key);
    ck_assert_msg(text != NULL, "%s: no metadata %s", ld_st_path(f), key);
    json_error_t jerr;
    json_t *array = json_loads(text, 0, &jerr);
    ck_assert_msg(json_is_array(array), "%s: metadata %s: %s", ld_st_path(f), key, jerr.text);
    const int n = (int)json_array_size(array);
    ck_assert_int_le(n, max);
    for (int i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(array, (size_t)i));
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_lt(strlen(s), size);
        strcpy(out + (size_t)i * size, s);
    }
    json_decref(array);
    return n;
}

static void load_one(sample_fixture *fx, const char *model, const char *file)
{
    const char *path = fixture("sampling/sample/%s/%s", model, file);
    snprintf(fx->model, sizeof fx->model, "%s", model);
    snprintf(fx->name, sizeof fx->name, "%.*s", (int)(strlen(file) - strlen(".safetensors")),
             file);
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    fx->n = metadata_strings(f, "images", &fx->images[0][0], sizeof fx->images[0],
                             SAMPLEFIX_MAX_IMAGES);
    char seeds[SAMPLEFIX_MAX_IMAGES][32];
    ck_assert_int_eq(metadata_strings(f, "seeds", &seeds[0][0], sizeof seeds[0],
                                      SAMPLEFIX_MAX_IMAGES), fx->n);
    ld_st_close(f);
    for (int i = 0; i < fx->n; i++) {
        char *dot = strrchr(fx->images[i], '.');
        if (dot && !strcmp(dot, ".png"))
            *dot = '\0';
        fx->seeds[i] = parse_u64(seeds[i]);
    }
    int64_t shape[4], noise_shape[4];
    size_t count, noise_count;
    fx->latents = read_tensor(path, "latents", &count, shape);
    fx->noise = read_tensor(path, "noise", &noise_count, noise_shape);
    ck_assert_int_eq(shape[0], fx->n);
    ck_assert_uint_eq(noise_count, count);
    ck_assert(!memcmp(shape, noise_shape, sizeof shape));
    fx->channels = (int)shape[1];
    fx->lh = (int)shape[2];
    fx->lw = (int)shape[3];
    fx->per_image = count / (size_t)fx->n;
}

sample_fixture *sample_fixtures_load(int *count)
{
    sample_fixture *all = NULL;
    *count = 0;
    int n_models;
    char **models = dir_entries(fixture("sampling/sample"), &n_models);
    for (int m = 0; m < n_models; m++) {
        int n_files;
        char **files = dir_entries(fixture("sampling/sample/%s", models[m]), &n_files);
        for (int i = 0; i < n_files; i++) {
            all = realloc(all, (size_t)(*count + 1) * sizeof *all);
            ck_assert_ptr_nonnull(all);
            load_one(&all[(*count)++], models[m], files[i]);
        }
        dir_entries_free(files, n_files);
    }
    dir_entries_free(models, n_models);
    ck_assert_msg(*count > 0, "no sampling fixtures under %s", fixture("sampling/sample"));
    return all;
}

void sample_fixtures_free(sample_fixture *all, int count)
{
    for (int i = 0; i < count; i++) {
        free(all[i].latents);
        free(all[i].noise);
    }
    free(all);
}

int sample_fixture_consecutive(const sample_fixture *f)
{
    for (int i = 1; i < f->n; i++)
        if (f->seeds[i] != f->seeds[0] + (uint64_t)i)
            return 0;
    return 1;
}
