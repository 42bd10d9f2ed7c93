/* What the service relies on in parsed request options. */
#ifndef LATENTD_FUZZ_OPTIONS_CHECK_H
#define LATENTD_FUZZ_OPTIONS_CHECK_H

#include "fuzz.h"

#include "../../src/server/request.h"

static inline void fuzz_check_options(const srv_options *o)
{
    const unsigned all = OUT_LATENTS | OUT_MEAN | OUT_LOGVAR | OUT_MOMENTS;
    FUZZ_CHECK(o->outputs != 0 && (o->outputs & ~all) == 0);
    FUZZ_CHECK(o->format == LD_OUT_JSON || o->format == LD_OUT_SAFETENSORS ||
               o->format == LD_OUT_NPY || o->format == LD_OUT_COMFYUI || o->format == LD_OUT_PNG);
}

#endif
