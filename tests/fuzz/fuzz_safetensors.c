/* A safetensors file through ld_st_open_memory (the same checks as ld_st_open):
 * every tensor it accepts lies inside the bytes given and converts without
 * reading past them.  Accepted files then go on as a checkpoint would: key
 * layout detection, the architecture read off the shapes, and the weights
 * loaded against it. */
#include "fuzz.h"
#include "config_check.h"

#include <string.h>

#include "latentd/safetensors.h"
#include "../../src/vae/vae_internal.h"

LD_FUZZ_TARGET("safetensors");

/* Bigger tensors are only bounds-checked here, not converted: the fuzzer's
 * comparison tracing makes conversion loops slow, and time should go to
 * parsing.  (ld_weights_load below converts the ones a model needs.) */
#define MAX_CONVERT 4096

static void check_tensors(const ld_st_file *f, const uint8_t *data, size_t size)
{
    char err[LD_ERR_LEN];
    for (size_t i = 0; i < ld_st_count(f); i++) {
        const ld_st_tensor *t = ld_st_at(f, i);
        FUZZ_CHECK(t && t->name && ld_st_find(f, t->name) == t);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= LD_ST_MAX_DIMS);
        FUZZ_CHECK(t->data >= data && t->nbytes <= size &&
                   (size_t)(t->data - data) <= size - t->nbytes);
        if (t->numel > MAX_CONVERT)
            continue;
        float *dst = malloc((t->numel ? t->numel : 1) * sizeof *dst);
        FUZZ_CHECK(dst != NULL);
        int rc = ld_st_to_f32(f, t, dst, err);
        FUZZ_CHECK(rc == LD_OK || (rc == LD_EUNSUPPORTED && t->dtype != LD_DT_F32 &&
                                   t->dtype != LD_DT_F16 && t->dtype != LD_DT_BF16));
        free(dst);
    }
    FUZZ_CHECK(ld_st_at(f, ld_st_count(f)) == NULL);
    (void)ld_st_metadata(f, "format");
}

static void load_as_checkpoint(const ld_st_file *f)
{
    char err[LD_ERR_LEN];
    ld_keymap map;
    if (ld_keymap_detect(f, &map, err) != LD_OK)
        return;
    ld_model *m = calloc(1, sizeof *m);
    FUZZ_CHECK(m != NULL);
    if (ld_config_infer(&map, &m->cfg, err) == LD_OK) {
        fuzz_check_config(&m->cfg);
        (void)ld_weights_load(m, &map, err);
    }
    ld_weights_free(m);
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ld_st_file *f = (ld_st_file *)1;
    char err[LD_ERR_LEN] = "";
    int rc = ld_st_open_memory(data, size, "fuzz.safetensors", &f, err);
    if (rc != LD_OK) {
        FUZZ_CHECK((rc == LD_EFORMAT || rc == LD_ENOMEM) && f == NULL && err[0]);
        return 0;
    }
    check_tensors(f, data, size);
    load_as_checkpoint(f);
    ld_st_close(f);
    return 0;
}
