/* Listing a dataset's inputs: folders walked, lists read, names filtered,
 * the whole sorted; see dataset.h. */
#include "latentd/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static int push(ld_input_list *list, const char *path, size_t rel_off, char *err)
{
    if (list->count == list->cap) {
        const size_t cap = list->cap ? list->cap * 2 : 1024;
        ld_input *grown = realloc(list->items, cap * sizeof *grown);
        if (!grown)
            return ld_fail(err, LD_ENOMEM, "out of memory for %zu paths", cap);
        list->items = grown;
        list->cap = cap;
    }
    char *copy = strdup(path);
    if (!copy)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    list->items[list->count++] = (ld_input){copy, rel_off};
    return LD_OK;
}

static bool any_match(const char *const *patterns, int n, const char *rel)
{
    for (int i = 0; i < n; i++)
        if (fnmatch(patterns[i], rel, 0) == 0)
            return true;
    return false;
}

/* Files found in a folder are images by their extension unless the caller
 * says what to include. */
static bool image_extension(const char *name)
{
    static const char *const exts[] = {".png", ".jpg", ".jpeg", ".webp"};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof exts / sizeof exts[0]; i++)
        if (strcasecmp(dot, exts[i]) == 0)
            return true;
    return false;
}

static bool wanted(const ld_input_filter *f, const char *rel, bool by_extension)
{
    const bool includes = f && f->n_include > 0;
    if (includes ? !any_match(f->include, f->n_include, rel)
                 : by_extension && !image_extension(rel))
        return false;
    return !(f && any_match(f->exclude, f->n_exclude, rel));
}

/* path (a buffer of 4096) holds a folder; its entries' relative names start at base. */
static int walk(ld_input_list *list, char *path, size_t base, const ld_input_filter *f,
                char *err)
{
    DIR *d = opendir(path);
    if (!d)
        return ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    const size_t len = strlen(path);
    int rc = LD_OK;
    struct dirent *e;
    while (rc == LD_OK && (errno = 0, e = readdir(d))) {
        if (e->d_name[0] == '.') /* ., .., and hidden files and folders */
            continue;
        if (len + 1 + strlen(e->d_name) >= 4096) {
            rc = ld_fail(err, LD_EINVAL, "%s/%s: path too long", path, e->d_name);
            break;
        }
        path[len] = '/';
        strcpy(path + len + 1, e->d_name);
        unsigned char type = e->d_type;
        struct stat st;
        if (type == DT_UNKNOWN || type == DT_LNK) {
            if (lstat(path, &st) != 0) {
                rc = ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
                break;
            }
            type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_LNK;
            /* a link to a file counts as the file; a link to a folder is not followed */
            if (type == DT_LNK && stat(path, &st) == 0 && S_ISREG(st.st_mode))
                type = DT_REG;
        }
        if (type == DT_DIR)
            rc = walk(list, path, base, f, err);
        else if (type == DT_REG && wanted(f, path + base, true))
            rc = push(list, path, base, err);
        path[len] = '\0';
    }
    if (rc == LD_OK && errno != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    closedir(d);
    return rc;
}

/* A file named directly: its path is its name, less "/" and "./" in front. */
static int add_file(ld_input_list *list, const char *path, const ld_input_filter *f, char *err)
{
    size_t off = 0;
    for (;;) {
        if (path[off] == '/')
            off++;
        else if (path[off] == '.' && path[off + 1] == '/')
            off += 2;
        else
            break;
    }
    const char *rel = path + off;
    for (const char *p = rel; *p; p = strchr(p, '/') ? strchr(p, '/') + 1 : p + strlen(p))
        if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
            return ld_fail(err, LD_EINVAL,
                           "%s: '..' in a path would put its output outside the output "
                           "folder; give the folder that holds it instead",
                           path);
    if (!*rel || rel[strlen(rel) - 1] == '/')
        return ld_fail(err, LD_EINVAL, "'%s' names no file", path);
    return wanted(f, rel, false) ? push(list, path, off, err) : LD_OK;
}

/* A list's lines are paths: one longer than this is no path (a list that is
 * /dev/zero, or binary, would otherwise grow one line without end). */
#define LIST_LINE_MAX 4096

/* The next line of fp into line (without its end); 1, 0 at the end of the
 * list, or an error for a line too long or holding a NUL byte. */
static int next_line(FILE *fp, const char *name, char line[LIST_LINE_MAX + 1], char *err)
{
    size_t n = 0;
    int c;
    while ((c = getc(fp)) != EOF && c != '\n') {
        if (c == '\0')
            return ld_fail(err, LD_EINVAL, "%s: a NUL byte in a line: not a list of paths", name);
        if (n == LIST_LINE_MAX)
            return ld_fail(err, LD_EINVAL, "%s: a line longer than %d bytes: not a list of paths",
                           name, LIST_LINE_MAX);
        line[n++] = (char)c;
    }
    line[n] = '\0';
    if (c == EOF && ferror(fp))
        return ld_fail(err, LD_EIO, "%s: read error", name);
    return c == EOF && n == 0 ? 0 : 1;
}

static int add_list(ld_input_list *list, FILE *fp, const char *name, const ld_input_filter *f,
                    char *err)
{
    char line[LIST_LINE_MAX + 1];
    int rc;
    while ((rc = next_line(fp, name, line, err)) == 1) {
        size_t n = strlen(line);
        while (n > 0 && line[n - 1] == '\r')
            line[--n] = '\0';
        if (n > 0 && (rc = add_file(list, line, f, err)) != LD_OK)
            return rc;
    }
    return rc;
}

int ld_inputs_add(ld_input_list *list, const char *arg, const ld_input_filter *filter,
                  char *err)
{
    if (strcmp(arg, "-") == 0)
        return add_list(list, stdin, "standard input", filter, err);
    if (arg[0] == '@') {
        FILE *fp = fopen(arg + 1, "r");
        if (!fp)
            return ld_fail(err, LD_EIO, "%s: %s", arg + 1, strerror(errno));
        const int rc = add_list(list, fp, arg + 1, filter, err);
        fclose(fp);
        return rc;
    }
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) {
        char path[4096];
        size_t len = strlen(arg);
        while (len > 1 && arg[len - 1] == '/')
            len--;
        if (len >= sizeof path - 1)
            return ld_fail(err, LD_EINVAL, "%s: path too long", arg);
        memcpy(path, arg, len);
        path[len] = '\0';
        return walk(list, path, len + 1, filter, err);
    }
    /* not a folder: one file, which fails in its turn if it cannot be read */
    return add_file(list, arg, filter, err);
}

/* The part of rel an output keeps: all but the last name's extension. */
static size_t stem_len(const char *rel)
{
    const char *slash = strrchr(rel, '/'), *name = slash ? slash + 1 : rel;
    const char *dot = strrchr(name, '.');
    return dot && dot > name ? (size_t)(dot - rel) : strlen(rel);
}

/* By stem, then by whole name: inputs that share an output end up side by side. */
static int by_stem(const void *pa, const void *pb)
{
    const char *a = ld_input_rel(pa), *b = ld_input_rel(pb);
    const size_t la = stem_len(a), lb = stem_len(b);
    const int c = memcmp(a, b, la < lb ? la : lb);
    if (c != 0)
        return c;
    if (la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

int ld_inputs_finish(ld_input_list *list, char *err)
{
    if (list->count > 1)
        qsort(list->items, list->count, sizeof *list->items, by_stem);
    for (size_t i = 1; i < list->count; i++) {
        const char *a = ld_input_rel(&list->items[i - 1]), *b = ld_input_rel(&list->items[i]);
        const size_t la = stem_len(a);
        if (la == stem_len(b) && memcmp(a, b, la) == 0)
            return ld_fail(err, LD_EINVAL, "%s and %s would write the same output",
                           list->items[i - 1].path, list->items[i].path);
    }
    return LD_OK;
}

void ld_inputs_free(ld_input_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->count; i++)
        free(list->items[i].path);
    free(list->items);
    *list = (ld_input_list){0};
}

int ld_output_path(const char *out_dir, const char *rel, ld_file_format format, char *buf,
                   size_t size, char *err)
{
    const int n = snprintf(buf, size, "%s/%.*s%s", out_dir, (int)stem_len(rel), rel,
                           ld_file_extension(format));
    if (n < 0 || (size_t)n >= size)
        return ld_fail(err, LD_EINVAL, "%s/%s: path too long", out_dir, rel);
    return LD_OK;
}
