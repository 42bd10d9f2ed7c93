/* One machine's share of a dataset; see dataset.h.  By a hash of the
 * relative name, so the share does not depend on the order files were found
 * in, on where the dataset is mounted, or on which other files exist. */
#include "latentd/dataset.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t ld_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* A whole non-negative decimal number below 2^31. */
static int parse_int(const char *text, int *out)
{
    if (!text || *text < '0' || *text > '9')
        return -1;
    errno = 0;
    char *end;
    const long v = strtol(text, &end, 10);
    if (*end || errno || v > 0x7fffffffL)
        return -1;
    *out = (int)v;
    return 0;
}

static int from_env(const char *index_var, const char *count_var, const char *min_var,
                    ld_shard *shard, char *err)
{
    const char *index = getenv(index_var), *count = getenv(count_var);
    const char *min = min_var ? getenv(min_var) : NULL;
    int first = 0;
    if (parse_int(index, &shard->index) || parse_int(count, &shard->count) ||
        (min && parse_int(min, &first)))
        return ld_fail(err, LD_EINVAL, "--shard auto: %s=%s and %s=%s are not whole numbers",
                       index_var, index ? index : "", count_var, count ? count : "");
    shard->index -= first;
    if (shard->count < 1 || shard->index < 0 || shard->index >= shard->count)
        return ld_fail(err, LD_EINVAL,
                       "--shard auto: task %d (%s=%s%s%s) is not in 0..%d (%s=%s): number the "
                       "tasks 0..N-1",
                       shard->index, index_var, index, min ? " less " : "", min ? min_var : "",
                       shard->count - 1, count_var, count);
    return LD_OK;
}

int ld_shard_parse(const char *text, ld_shard *shard, char *err)
{
    if (strcmp(text, "auto") == 0) {
        const bool slurm = getenv("SLURM_ARRAY_TASK_ID") || getenv("SLURM_ARRAY_TASK_COUNT");
        const bool k8s = getenv("JOB_COMPLETION_INDEX") || getenv("LATENTD_SHARD_COUNT");
        if (getenv("SLURM_ARRAY_TASK_ID") && getenv("SLURM_ARRAY_TASK_COUNT"))
            return from_env("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                            "SLURM_ARRAY_TASK_MIN", shard, err);
        if (getenv("JOB_COMPLETION_INDEX") && getenv("LATENTD_SHARD_COUNT"))
            return from_env("JOB_COMPLETION_INDEX", "LATENTD_SHARD_COUNT", NULL, shard, err);
        if (slurm)
            return ld_fail(err, LD_EINVAL, "--shard auto: a Slurm array job sets both "
                           "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT; only one is set");
        if (k8s)
            return ld_fail(err, LD_EINVAL, "--shard auto: a Kubernetes Indexed Job needs both "
                           "JOB_COMPLETION_INDEX (set by Kubernetes) and LATENTD_SHARD_COUNT "
                           "(set it to the Job's completions); only one is set");
        return ld_fail(err, LD_EINVAL,
                       "--shard auto: no shard in the environment: set SLURM_ARRAY_TASK_ID and "
                       "SLURM_ARRAY_TASK_COUNT (a Slurm array job), or JOB_COMPLETION_INDEX and "
                       "LATENTD_SHARD_COUNT (a Kubernetes Indexed Job), or give --shard I/N");
    }
    const char *slash = strchr(text, '/');
    char index[16];
    if (slash && (size_t)(slash - text) < sizeof index) {
        memcpy(index, text, (size_t)(slash - text));
        index[slash - text] = '\0';
        if (parse_int(index, &shard->index) == 0 && parse_int(slash + 1, &shard->count) == 0 &&
            shard->count >= 1 && shard->index < shard->count)
            return LD_OK;
    }
    return ld_fail(err, LD_EINVAL, "--shard wants I/N with 0 <= I < N, or auto (got '%s')", text);
}

bool ld_shard_has(const ld_shard *shard, const char *rel)
{
    return ld_fnv1a64(rel, strlen(rel)) % (uint64_t)shard->count == (uint64_t)shard->index;
}

void ld_inputs_keep_shard(ld_input_list *list, const ld_shard *shard)
{
    size_t kept = 0;
    for (size_t i = 0; i < list->count; i++) {
        if (ld_shard_has(shard, ld_input_rel(&list->items[i])))
            list->items[kept++] = list->items[i];
        else
            free(list->items[i].path);
    }
    list->count = kept;
}
