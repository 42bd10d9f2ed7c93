/* A VAE's config.json (diffusers' format) through ld_config_parse, the parser
 * behind ld_config_read: bad input is refused, good input gives an
 * architecture the encoder graph can build. */
#include "fuzz.h"
#include "config_check.h"

#include "../../src/vae/vae_internal.h"

LD_FUZZ_TARGET("config");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ld_vae_config cfg;
    char err[LD_ERR_LEN] = "";
    int rc = ld_config_parse((const char *)data, size, "config.json", &cfg, err);
    if (rc == LD_OK)
        fuzz_check_config(&cfg);
    else
        FUZZ_CHECK((rc == LD_EFORMAT || rc == LD_EUNSUPPORTED) && err[0]);
    return 0;
}
