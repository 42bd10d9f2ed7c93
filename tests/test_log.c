/* The daemon's log: one event is one line whatever bytes a client put into
 * the message (a percent-decoded path can hold a newline and a forged
 * timestamp), and what was escaped can be read back unambiguously. */
#include "log.h"
#include "testutil.h"

#include <check.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *dir, path[4200];
} temp_log;

static void open_log(temp_log *t)
{
    t->dir = make_temp_dir();
    snprintf(t->path, sizeof t->path, "%s/latentd.log", t->dir);
    char err[LD_ERR_LEN];
    ck_assert_msg(srv_log_open(t->path, LOG_DEBUG, err) == LD_OK, "%s", err);
}

/* Close the log and return its lines (the array and the text are malloc'd). */
static char **close_log(temp_log *t, int *n_lines, char **text)
{
    srv_log_close();
    size_t len;
    *text = (char *)read_all(t->path, &len);
    *text = realloc(*text, len + 1);
    (*text)[len] = '\0';
    ck_assert_msg(len > 0 && (*text)[len - 1] == '\n', "the log ends mid-line");
    char **lines = calloc(len + 1, sizeof *lines);
    int n = 0;
    for (char *p = *text; *p; n++) {
        lines[n] = p;
        p = strchr(p, '\n');
        *p++ = '\0';
    }
    *n_lines = n;
    unlink(t->path);
    rmdir(t->dir);
    free(t->dir);
    return lines;
}

/* "2026-11-25T03:17:45.507Z info " then the message */
static const char *message_of(const char *line, const char *level)
{
    regex_t re;
    ck_assert_int_eq(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ",
                             REG_EXTENDED | REG_NOSUB), 0);
    ck_assert_msg(regexec(&re, line, 0, NULL, 0) == 0, "not a log line: %s", line);
    regfree(&re);
    const char *rest = line + 25;
    ck_assert_msg(strncmp(rest, level, strlen(level)) == 0 && rest[strlen(level)] == ' ',
                  "level of %s", line);
    return rest + strlen(level) + 1;
}

START_TEST(client_bytes_cannot_forge_lines)
{
    static const struct {
        const char *path, *logged;
    } cases[] = {
        {"/x\n2026-11-25T00:00:00.000Z info forged", "/x\\x0a2026-11-25T00:00:00.000Z info forged"},
        {"/cr\r/lf\n/tab\t/bell\a/esc\x1b[31m/del\x7f", /* CR, LF, other C0 and DEL */
         "/cr\\x0d/lf\\x0a/tab\\x09/bell\\x07/esc\\x1b[31m/del\\x7f"},
        {"/bad\xff\xfe/lone\x80/overlong\xc0\xaf/cut\xe2\x82", /* not UTF-8 */
         "/bad\\xff\\xfe/lone\\x80/overlong\\xc0\\xaf/cut\\xe2\\x82"},
        {"/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80", "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80"},
        {"/already\\x0a", "/already\\x5cx0a"}, /* a literal backslash stays distinguishable */
        {"/plain/path?a=1&b=%20", "/plain/path?a=1&b=%20"},
    };
    const int n_cases = sizeof cases / sizeof cases[0];
    temp_log t;
    open_log(&t);
    for (int i = 0; i < n_cases; i++)
        srv_log(LOG_INFO, "GET %s 404 images=0", cases[i].path);
    int n;
    char *text;
    char **lines = close_log(&t, &n, &text);
    ck_assert_int_eq(n, n_cases);
    for (int i = 0; i < n_cases; i++) {
        char want[512];
        snprintf(want, sizeof want, "GET %s 404 images=0", cases[i].logged);
        ck_assert_str_eq(message_of(lines[i], "info"), want);
    }
    free(lines);
    free(text);
}
END_TEST

/* Past the formatting buffer's size a message is still whole and escaped;
 * every byte value alone in a message gives one line. */
START_TEST(long_messages_and_every_byte)
{
    temp_log t;
    open_log(&t);
    char *big = malloc(5001);
    for (int i = 0; i < 5000; i++)
        big[i] = i % 1000 == 999 ? '\n' : (char)('a' + i % 26);
    big[5000] = '\0';
    srv_log(LOG_WARN, "%s", big);
    for (int b = 1; b < 256; b++)
        srv_log(LOG_DEBUG, "byte %c end", b);
    int n;
    char *text;
    char **lines = close_log(&t, &n, &text);
    ck_assert_int_eq(n, 1 + 255);
    const char *m = message_of(lines[0], "warn");
    ck_assert_uint_eq(strlen(m), 5000 + 5 * 3); /* five newlines, each now 4 bytes */
    ck_assert_ptr_null(strchr(m, '\n'));
    for (int b = 1; b < 256; b++) {
        const char *got = message_of(lines[b], "debug");
        char want[32];
        if (b < 0x20 || b >= 0x7f || b == '\\')
            snprintf(want, sizeof want, "byte \\x%02x end", b);
        else
            snprintf(want, sizeof want, "byte %c end", b);
        ck_assert_str_eq(got, want);
    }
    free(lines);
    free(text);
    free(big);
}
END_TEST

/* A log path swapped for a link or a FIFO nobody reads: the reopen fails
 * at once (no open that waits for ever with the log's lock held), the old
 * log goes on, and what the link leads to is untouched. */
START_TEST(reopen_refuses_links_and_readerless_fifos)
{
    temp_log t;
    open_log(&t);
    char target[4300], err[LD_ERR_LEN];
    snprintf(target, sizeof target, "%s/target", t.dir);
    write_all(target, "mine\n", 5);
    char moved[4300];
    snprintf(moved, sizeof moved, "%s/old.log", t.dir);
    srv_log(LOG_INFO, "before");
    ck_assert_int_eq(rename(t.path, moved), 0); /* as logrotate moves it */
    ck_assert_int_eq(symlink("target", t.path), 0);
    ck_assert_int_eq(srv_log_reopen(err), LD_EIO);
    ck_assert_msg(strstr(err, "symbolic link"), "%s", err);
    ck_assert_int_eq(unlink(t.path), 0);
    ck_assert_int_eq(mkfifo(t.path, 0600), 0);
    ck_assert_int_eq(srv_log_reopen(err), LD_EIO);
    ck_assert_msg(strstr(err, "no reader"), "%s", err);
    srv_log(LOG_INFO, "after");
    srv_log_close();
    size_t len;
    char *text = (char *)read_all(target, &len);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(text, "mine\n", 5);
    free(text);
    text = (char *)read_all(moved, &len);
    text[len] = '\0';
    ck_assert_ptr_nonnull(strstr(text, "before"));
    ck_assert_ptr_nonnull(strstr(text, "after")); /* the old log went on */
    free(text);
    remove_temp_dir(t.dir);
}
END_TEST

static Suite *log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("lines");
    tcase_add_test(tc, client_bytes_cannot_forge_lines);
    tcase_add_test(tc, long_messages_and_every_byte);
    tcase_add_test(tc, reopen_refuses_links_and_readerless_fifos);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(log_suite());
}
