/* Several models in one daemon, and their reload without downtime: the real
 * latentd on a loopback port, its answers checked against each fixture
 * model's expected values.
 *
 * - the config's model keys and flags, as srv_config reads them;
 * - two models: each request is answered by the model it names (JSON field,
 *   form field, query parameter) or by the default; /v1/models lists both;
 *   an unknown name is 404 unknown-model; metrics count images by model;
 * - SIGHUP while a client sends requests in a loop: a changed path and a new
 *   model are loaded and swapped in between RELOADING=1 and READY=1, no
 *   request fails, every answer equals its model's fixture before and after,
 *   and the replaced weights are freed once their jobs are done;
 * - a reload whose model does not load, or whose encoders would not fit the
 *   memory budget, keeps the running models. */
#include <check.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "settings.h"
#include "testutil.h"

/* ---------------- the config ---------------- */

static int parse_args(srv_config *cfg, const char *const *argv, char *err)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    srv_config_defaults(cfg);
    int rc = srv_config_from_args(cfg, argc, (char **)argv, err);
    return rc == LD_OK ? srv_config_finish(cfg, err) : rc;
}

START_TEST(config_names_models)
{
    char err[LD_ERR_LEN];
    srv_config cfg;
    char *dir = make_temp_dir();
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/latentd.conf", dir);
    const char *text = "model.xl = /m/sdxl\nmodel.flux = /m/flux/\ndefault_model = flux\n";
    write_all(conf, text, strlen(text));
    /* file keys in order, flags after them: a bare --model PATH is named after its folder */
    const char *const a1[] = {"latentd", "-c", conf, "--model", "/m/sd15/", "--model",
                              "xl=/m/other", NULL};
    ck_assert_msg(parse_args(&cfg, a1, err) == LD_OK, "%s", err);
    ck_assert_int_eq(cfg.n_models, 3);
    ck_assert_str_eq(cfg.models[0].name, "xl");
    ck_assert_str_eq(cfg.models[0].path, "/m/other"); /* the flag overrides the file */
    ck_assert_str_eq(cfg.models[1].name, "flux");
    ck_assert_str_eq(cfg.models[2].name, "sd15");
    ck_assert_str_eq(srv_config_default_model(&cfg)->name, "flux");
    /* no default_model: the first */
    const char *const a2[] = {"latentd", "--model", "a=/m/a", "--set", "model.b=/m/b", NULL};
    ck_assert_msg(parse_args(&cfg, a2, err) == LD_OK, "%s", err);
    ck_assert_int_eq(cfg.n_models, 2);
    ck_assert_str_eq(srv_config_default_model(&cfg)->name, "a");
    ck_assert_str_eq(cfg.models[1].path, "/m/b");
    /* a bare model given twice is one model */
    const char *const a3[] = {"latentd", "--model", "/m/one", "--model", "/m/two", NULL};
    ck_assert_msg(parse_args(&cfg, a3, err) == LD_OK, "%s", err);
    ck_assert_int_eq(cfg.n_models, 1);
    ck_assert_str_eq(cfg.models[0].name, "two");
    /* a folder named anything gives a name of the name alphabet (it reaches
     * URLs, logs, metric labels and STATUS= lines) */
    const char *const odd[] = {"latentd", "--model", "/m/my vae\nv2\xc3\xa9", NULL};
    ck_assert_msg(parse_args(&cfg, odd, err) == LD_OK, "%s", err);
    ck_assert_str_eq(cfg.models[0].name, "my_vae_v2__");
    /* refused: a bad name, two models of one name, an unknown default, none */
    const char *const bad_name[] = {"latentd", "--set", "model.a b=/m/x", NULL};
    ck_assert_int_eq(parse_args(&cfg, bad_name, err), LD_EINVAL);
    const char *const twice[] = {"latentd", "--model", "/m/sd", "--model", "sd=/m/other", NULL};
    ck_assert_int_eq(parse_args(&cfg, twice, err), LD_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "two models are named 'sd'"));
    const char *const no_default[] = {"latentd", "--model", "a=/m/a", "--set",
                                      "default_model=b", NULL};
    ck_assert_int_eq(parse_args(&cfg, no_default, err), LD_EINVAL);
    const char *const none[] = {"latentd", NULL};
    ck_assert_int_eq(parse_args(&cfg, none, err), LD_EINVAL);
    unlink(conf);
    rmdir(dir);
    free(dir);
}
END_TEST

/* ---------------- answers ---------------- */

/* An answer's latents for one image against the fixture of the model that
 * says it answered (the "model" field names the weights' folder); returns
 * that name in model, or false with why filled.  No ck_assert on the answer:
 * client threads call it. */
static bool answer_matches(const reply *r, const char *image, char *model, size_t size,
                           char *why, size_t why_size)
{
    if (r->status != 200) {
        snprintf(why, why_size, "status %ld: %.200s", r->status, r->body ? r->body : r->headers);
        return false;
    }
    json_t *root = json_loadb(r->body, r->len, 0, NULL);
    const char *name = root ? json_string_value(json_object_get(root, "model")) : NULL;
    if (!name) {
        snprintf(why, why_size, "no model in %.200s", r->body);
        json_decref(root);
        return false;
    }
    snprintf(model, size, "%s", name);
    size_t cnt, n;
    float *got = tensor_from_json(json_object_get(root, "latents"), &cnt);
    float *want = read_tensor(fixture("expected/%s/%s.safetensors", name, image), "latents", &n,
                              NULL);
    const double e = cnt == n ? rel_error(got, want, n) : 1e9;
    if (e > 1e-4)
        snprintf(why, why_size, "%s by %s: off by %g (%zu of %zu values)", image, name, e, cnt, n);
    free(got);
    free(want);
    json_decref(root);
    return e <= 1e-4;
}

/* One image encoded with `extra` JSON fields and `query`; the model that answered. */
static void encode_expect(const daemon_t *d, const char *query, const char *extra,
                          const char *image, const char *want_model)
{
    const char *names[] = {image};
    char *body = json_request(names, 1, extra);
    char path[256], model[128] = "", why[512] = "";
    snprintf(path, sizeof path, "/v1/encode%s", query ? query : "");
    reply r = http(d, path, "application/json", body, strlen(body), NULL, NULL);
    ck_assert_msg(answer_matches(&r, image, model, sizeof model, why, sizeof why), "%s", why);
    ck_assert_str_eq(model, want_model);
    free(r.body);
    free(body);
}

START_TEST(two_models_answer_for_themselves)
{
    char xl[4300];
    snprintf(xl, sizeof xl, "xl=%s", fixture("models/tiny-sdxl-meanstd"));
    const char *const extra[] = {"--model", xl, NULL};
    daemon_t d = start_daemon("models/tiny-sd", extra);
    /* the default (the first: the bare --model) and xl, by every way of naming it */
    encode_expect(&d, NULL, NULL, "coffee_64", "tiny-sd");
    encode_expect(&d, NULL, "\"model\": \"xl\"", "coffee_64", "tiny-sdxl-meanstd");
    encode_expect(&d, "?model=xl", NULL, "chelsea_64", "tiny-sdxl-meanstd");
    encode_expect(&d, "?model=xl", "\"model\": \"tiny-sd\"", "chelsea_64", "tiny-sd"); /* body wins */
    CURL *c = curl_easy_init();
    curl_mime *form = curl_mime_init(c);
    curl_mimepart *p = curl_mime_addpart(form);
    curl_mime_name(p, "image");
    curl_mime_filedata(p, fixture("images/astronaut_64.png"));
    p = curl_mime_addpart(form);
    curl_mime_name(p, "model");
    curl_mime_data(p, "xl", CURL_ZERO_TERMINATED);
    reply r = http(&d, "/v1/encode", NULL, NULL, 0, form, NULL);
    char model[128], why[512] = "";
    ck_assert_msg(answer_matches(&r, "astronaut_64", model, sizeof model, why, sizeof why), "%s",
                  why);
    ck_assert_str_eq(model, "tiny-sdxl-meanstd");
    free(r.body);
    curl_mime_free(form);
    curl_easy_cleanup(c);
    /* an unknown name: in the body, the query, and for /v1/model */
    static const char *const one[] = {"coffee_64"};
    r = post_json(&d, "/v1/encode", one, 1, "\"model\": \"sd3\"");
    assert_error(&r, 404, "unknown-model");
    free(r.body);
    r = post_json(&d, "/v1/encode?model=sd3", one, 1, NULL);
    assert_error(&r, 404, "unknown-model");
    free(r.body);
    r = http(&d, "/v1/model?model=sd3", NULL, NULL, 0, NULL, NULL);
    assert_error(&r, 404, "unknown-model");
    free(r.body);
    /* /v1/models lists both with their configs; /v1/model is the default or ?model= */
    r = http(&d, "/v1/models", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    json_t *root = parse(&r);
    ck_assert_str_eq(json_string_value(json_object_get(root, "default")), "tiny-sd");
    json_t *list = json_object_get(root, "models");
    ck_assert_int_eq(json_array_size(list), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "name")), "tiny-sd");
    ck_assert(json_is_true(json_object_get(json_array_get(list, 0), "default")));
    json_t *second = json_array_get(list, 1);
    ck_assert_str_eq(json_string_value(json_object_get(second, "name")), "xl");
    ck_assert(json_is_false(json_object_get(second, "default")));
    ck_assert_int_eq(json_array_size(json_object_get(json_object_get(second, "config"),
                                                     "latents_mean")), 4);
    json_decref(root);
    free(r.body);
    r = http(&d, "/v1/model", NULL, NULL, 0, NULL, NULL);
    root = parse(&r);
    ck_assert_str_eq(json_string_value(json_object_get(root, "name")), "tiny-sd");
    json_decref(root);
    free(r.body);
    r = http(&d, "/v1/model?model=xl", NULL, NULL, 0, NULL, NULL);
    root = parse(&r);
    ck_assert_str_eq(json_string_value(json_object_get(root, "name")), "xl");
    ck_assert(json_is_null(json_object_get(json_object_get(root, "config"), "shift_factor")));
    json_decref(root);
    free(r.body);
    /* images are counted by the model that encoded them */
    ck_assert_double_eq(metric_value(&d, "latentd_images_encoded_total{model=\"tiny-sd\"}"), 2);
    ck_assert_double_eq(metric_value(&d, "latentd_images_encoded_total{model=\"xl\"}"), 3);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* ---------------- reload ---------------- */

static void write_conf(const char *path, const char *xl_model, const char *third)
{
    char text[8192];
    /* the file's models come before start_daemon's --model: name the default */
    int n = snprintf(text, sizeof text, "# written by test_models\ndefault_model = tiny-sd\n"
                     "model.xl = %s\n", fixture("models/%s", xl_model));
    if (third)
        snprintf(text + n, sizeof text - (size_t)n, "model.third = %s\n",
                 fixture("models/%s", third));
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    write_all(tmp, text, strlen(text));
    ck_assert_int_eq(rename(tmp, path), 0); /* whole, as an editor or a package manager does */
}

/* A client sending requests in a loop, alternately to the default and to xl. */
typedef struct {
    const daemon_t *d;
    atomic_bool stop;
    atomic_int sent;
    int failures, by_sd, by_sdxl, by_flux;
    char why[512];
} looper;

static void *loop_main(void *arg)
{
    looper *l = arg;
    static const char *const images[] = {"coffee_64", "chelsea_64", "astronaut_64"};
    char *bodies[2][3];
    for (int k = 0; k < 3; k++) {
        bodies[0][k] = json_request(&images[k], 1, NULL);
        bodies[1][k] = json_request(&images[k], 1, "\"model\": \"xl\"");
    }
    for (int i = 0; !atomic_load(&l->stop); i++) {
        const char *body = bodies[i % 2][i % 3];
        reply r = http_try(l->d, "/v1/encode", "application/json", body, strlen(body), NULL,
                           NULL);
        char model[128] = "", why[512] = "";
        if (!answer_matches(&r, images[i % 3], model, sizeof model, why, sizeof why)) {
            l->failures++;
            snprintf(l->why, sizeof l->why, "request %d: %s", i, why);
        } else if (i % 2 == 0 ? strcmp(model, "tiny-sd") != 0
                              : strcmp(model, "tiny-sdxl-meanstd") && strcmp(model, "tiny-flux16")) {
            l->failures++;
            snprintf(l->why, sizeof l->why, "request %d answered by %s", i, model);
        } else {
            l->by_sd += !strcmp(model, "tiny-sd");
            l->by_sdxl += !strcmp(model, "tiny-sdxl-meanstd");
            l->by_flux += !strcmp(model, "tiny-flux16");
        }
        free(r.body);
        atomic_fetch_add(&l->sent, 1);
    }
    for (int k = 0; k < 3; k++) {
        free(bodies[0][k]);
        free(bodies[1][k]);
    }
    return NULL;
}

static void wait_sent(looper *l, int at_least)
{
    const double deadline = ld_now_seconds() + 60 * test_time_scale();
    while (atomic_load(&l->sent) < at_least && ld_now_seconds() < deadline)
        usleep(10 * 1000);
    ck_assert_int_ge(atomic_load(&l->sent), at_least);
}

START_TEST(reload_while_requests_run)
{
    char *dir = make_temp_dir();
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/latentd.conf", dir);
    write_conf(conf, "tiny-sdxl-meanstd", NULL);
    const char *const flags[] = {"-c", conf, NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    looper l = {.d = &d};
    pthread_t thread;
    ck_assert_int_eq(pthread_create(&thread, NULL, loop_main, &l), 0);
    wait_sent(&l, 6);
    /* xl's path changes and a third model comes: loaded beside the running ones */
    write_conf(conf, "tiny-flux16", "tiny-noattn");
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert_msg(daemon_wait_notify(&d, "RELOADING=1") == 0, "no RELOADING=1");
    ck_assert_msg(daemon_wait_notify(&d, "READY=1") == 0, "no READY=1 after RELOADING=1");
    const int at_ready = atomic_load(&l.sent);
    wait_sent(&l, at_ready + 6); /* and on, after the swap */
    atomic_store(&l.stop, true);
    pthread_join(thread, NULL);
    ck_assert_msg(l.failures == 0, "%d failed: %s", l.failures, l.why);
    ck_assert_int_gt(l.by_sd, 0);
    ck_assert_int_gt(l.by_sdxl, 0); /* before the reload */
    ck_assert_int_gt(l.by_flux, 0); /* after it */
    /* after READY=1 the new set answers, the new model included */
    encode_expect(&d, "?model=xl", NULL, "rocket_128", "tiny-flux16");
    encode_expect(&d, "?model=third", NULL, "coffee_64", "tiny-noattn");
    encode_expect(&d, NULL, NULL, "coffee_64", "tiny-sd");
    ck_assert(log_contains(&d, "reload: serving xl, third, tiny-sd (default tiny-sd): "
                               "2 loaded, 1 kept, 1 let go once their jobs finish"));
    /* the replaced weights are freed once their last job is done */
    const double deadline = ld_now_seconds() + 10 * test_time_scale();
    while (!log_contains(&d, "model xl (") && ld_now_seconds() < deadline)
        usleep(20 * 1000);
    ck_assert(log_contains(&d, "tiny-sdxl-meanstd) unloaded"));
    reply r = http(&d, "/v1/models", NULL, NULL, 0, NULL, NULL);
    json_t *root = parse(&r);
    ck_assert_int_eq(json_array_size(json_object_get(root, "models")), 3);
    json_decref(root);
    free(r.body);

    /* a model that does not load: the running ones stay, and READY=1 still follows */
    const char *text = "default_model = tiny-sd\nmodel.xl = /nonexistent/model\n";
    write_all(conf, text, strlen(text));
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert(daemon_wait_notify(&d, "RELOADING=1") == 0);
    ck_assert(daemon_wait_notify(&d, "READY=1") == 0);
    ck_assert(log_contains(&d, "reload: kept the running models: model xl (/nonexistent/model)"));
    encode_expect(&d, "?model=xl", NULL, "coffee_64", "tiny-flux16");
    encode_expect(&d, "?model=third", NULL, "coffee_64", "tiny-noattn");
    ck_assert_int_eq(stop_daemon(&d), 0);
    unlink(conf);
    rmdir(dir);
    free(dir);
}
END_TEST

/* The workers' memory is reserved for the largest model: a reload that adds
 * a model whose encoder needs more than the budget has keeps the running set.
 * At --threads 1 and the default max_image_pixels tiny-sd's workers need
 * 332 MiB, tiny-flux16's 347 MiB (the log's "MiB kept" at start); with a
 * request of 1 MiB (3 MiB priced), 341 MiB admits the first, not the second. */
START_TEST(reload_that_would_not_fit_keeps_the_models)
{
    char *dir = make_temp_dir();
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/latentd.conf", dir);
    const char *text = "max_body_bytes = 1M\nmemory_budget_bytes = 341M\n";
    write_all(conf, text, strlen(text));
    const char *const flags[] = {"-c", conf, NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    char more[8192];
    snprintf(more, sizeof more, "%smodel.flux = %s\n", text, fixture("models/tiny-flux16"));
    write_all(conf, more, strlen(more));
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert(daemon_wait_notify(&d, "RELOADING=1") == 0);
    ck_assert(daemon_wait_notify(&d, "READY=1") == 0);
    ck_assert(log_contains(&d, "reload: kept the running models: memory_budget_bytes (341 MiB) "
                               "is too small"));
    ck_assert(log_contains(&d, "tiny-flux16) unloaded")); /* loaded, refused, freed at once */
    static const char *const one[] = {"coffee_64"};
    reply r = post_json(&d, "/v1/encode?model=flux", one, 1, NULL);
    assert_error(&r, 404, "unknown-model");
    free(r.body);
    encode_expect(&d, NULL, NULL, "coffee_64", "tiny-sd");
    ck_assert_int_eq(stop_daemon(&d), 0);
    unlink(conf);
    rmdir(dir);
    free(dir);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("models");
    TCase *tc = tcase_create("models");
    tcase_set_timeout(tc, 300 * test_time_scale());
    tcase_add_test(tc, config_names_models);
    tcase_add_test(tc, two_models_answer_for_themselves);
    tcase_add_test(tc, reload_while_requests_run);
    tcase_add_test(tc, reload_that_would_not_fit_keeps_the_models);
    suite_add_tcase(s, tc);
    const int rc = run_suite(s);
    curl_global_cleanup();
    return rc;
}
