/* Reading and writing files without being led elsewhere; see safefile.h. */
#include "latentd/safefile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tries at a temporary name before giving up: names are taken only by
 * stale files of a killed process that had our pid, or planted on purpose. */
#define TEMP_TRIES 1000

bool ld_is_special(unsigned mode)
{
    return S_ISFIFO(mode) || S_ISCHR(mode) || S_ISBLK(mode) || S_ISSOCK(mode);
}

static const char *kind_of(unsigned mode)
{
    return S_ISFIFO(mode)  ? "a FIFO"
           : S_ISCHR(mode) ? "a character device"
           : S_ISBLK(mode) ? "a block device"
           : S_ISSOCK(mode) ? "a socket"
           : S_ISDIR(mode) ? "a folder"
                           : "not a regular file";
}

/* ---- reading ---- */

int ld_open_regular(int dir_fd, const char *name, bool follow, uint64_t max_bytes,
                    const char *shown, int *fd_out, char *err)
{
    /* O_NONBLOCK: a FIFO's open would wait for a writer, maybe forever */
    const int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW);
    const int fd = openat(dir_fd, name, flags);
    if (fd < 0)
        return ld_fail(err, LD_EIO, "%s: %s", shown,
                       !follow && errno == ELOOP ? "a symbolic link, not followed"
                                                 : strerror(errno));
    struct stat st;
    int fl;
    int rc = LD_OK;
    if (fstat(fd, &st) != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", shown, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = ld_fail(err, LD_EUNSUPPORTED, "%s: %s, not a regular file: not read", shown,
                     kind_of(st.st_mode));
    else if ((uint64_t)st.st_size > (max_bytes ? max_bytes : LD_MAX_FILE_BYTES_DEFAULT))
        rc = ld_fail(err, LD_ETOOLARGE, "%s: %llu bytes, over the limit of %llu", shown,
                     (unsigned long long)st.st_size,
                     (unsigned long long)(max_bytes ? max_bytes : LD_MAX_FILE_BYTES_DEFAULT));
    else if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", shown, strerror(errno));
    if (rc != LD_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return LD_OK;
}

int ld_read_fd(int fd, uint64_t max_bytes, const char *shown, uint8_t **data, size_t *len,
               char *err)
{
    const uint64_t max = max_bytes ? max_bytes : LD_MAX_FILE_BYTES_DEFAULT;
    struct stat st;
    /* the size as a first guess (+1 to see the end without a second buffer) */
    size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 && (uint64_t)st.st_size < max
                     ? (size_t)st.st_size + 1
                     : 1 << 16;
    size_t used = 0;
    uint8_t *buf = NULL;
    for (;;) {
        if (used == cap || !buf) {
            if (buf)
                cap *= 2;
            uint8_t *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                return ld_fail(err, LD_ENOMEM, "%s: out of memory", shown);
            }
            buf = grown;
        }
        const ssize_t got = read(fd, buf + used, cap - used);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            const int e = errno;
            free(buf);
            return ld_fail(err, LD_EIO, "%s: %s", shown, strerror(e));
        }
        if (got == 0)
            break;
        used += (size_t)got;
        if (used > max) { /* it grew while read */
            free(buf);
            return ld_fail(err, LD_ETOOLARGE, "%s: over the limit of %llu bytes", shown,
                           (unsigned long long)max);
        }
    }
    *data = buf;
    *len = used;
    return LD_OK;
}

int ld_read_regular(const char *path, uint64_t max_bytes, uint8_t **data, size_t *len,
                    char *err)
{
    int fd = -1;
    int rc = ld_open_regular(AT_FDCWD, path, true, max_bytes, path, &fd, err);
    if (rc != LD_OK)
        return rc;
    rc = ld_read_fd(fd, max_bytes, path, data, len, err);
    close(fd);
    return rc;
}

/* ---- folders ---- */

/* mkdir -p of a folder the user named (links in it followed, as the user's) */
static int make_folders(const char *folder, char *err)
{
    char dir[PATH_MAX];
    if (!folder[0]) /* the scan below starts past the first byte */
        return ld_fail(err, LD_EINVAL, "an empty folder name");
    if (snprintf(dir, sizeof dir, "%s", folder) >= (int)sizeof dir)
        return ld_fail(err, LD_EINVAL, "%s: path too long", folder);
    for (char *p = dir + 1;; p++) {
        const char c = *p;
        if (c != '/' && c != '\0')
            continue;
        *p = '\0';
        if (mkdir(dir, 0777) != 0 && errno != EEXIST) /* another process may make it first */
            return ld_fail(err, LD_EIO, "%s: %s", dir, strerror(errno));
        *p = c;
        if (!c)
            return LD_OK;
    }
}

/* One name below dir_fd, opened as a folder (made first with create); a
 * link or anything else but a folder is LD_EINVAL. */
static int open_below(int dir_fd, const char *name, bool create, const char *shown, int len,
                      int *out, char *err)
{
    if (create && mkdirat(dir_fd, name, 0777) != 0 && errno != EEXIST)
        return ld_fail(err, LD_EIO, "%.*s: %s", len, shown, strerror(errno));
    const int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        *out = fd;
        return LD_OK;
    }
    if (errno == ELOOP || errno == ENOTDIR)
        return ld_fail(err, LD_EINVAL, "%.*s: not a folder (a symbolic link is not followed)",
                       len, shown);
    return ld_fail(err, LD_EIO, "%.*s: %s", len, shown, strerror(errno));
}

int ld_tree_dir(const char *root, const char *rel, bool create, int *dir_fd,
                const char **leaf, char *err)
{
    char shown[PATH_MAX];
    if (snprintf(shown, sizeof shown, "%s/%s", root, rel) >= (int)sizeof shown)
        return ld_fail(err, LD_EINVAL, "%s/%s: path too long", root, rel);
    const int root_len = (int)strlen(root);
    if (create) {
        const int rc = make_folders(root, err);
        if (rc != LD_OK)
            return rc;
    }
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return ld_fail(err, LD_EIO, "%s: %s", root, strerror(errno));
    for (const char *p = rel;;) {
        const size_t n = strcspn(p, "/");
        const int upto = root_len + 1 + (int)(p - rel + n);
        int rc = LD_OK;
        if (n == 2 && p[0] == '.' && p[1] == '.')
            rc = ld_fail(err, LD_EINVAL, "%.*s: '..' would leave %s", upto, shown, root);
        else if (!p[n] && (n == 0 || (n == 1 && p[0] == '.')))
            rc = ld_fail(err, LD_EINVAL, "%s: names no file", shown);
        else if (n > NAME_MAX)
            rc = ld_fail(err, LD_EINVAL, "%.*s: name too long", upto, shown);
        if (rc != LD_OK) {
            close(fd);
            return rc;
        }
        if (!p[n]) {
            *dir_fd = fd;
            *leaf = p;
            return LD_OK;
        }
        if (n == 0 || (n == 1 && p[0] == '.')) { /* "a//b", "a/./b": the same folder */
            p += n + 1;
            continue;
        }
        char name[NAME_MAX + 1];
        memcpy(name, p, n);
        name[n] = '\0';
        int next = -1;
        rc = open_below(fd, name, create, shown, upto, &next, err);
        close(fd);
        if (rc != LD_OK)
            return rc;
        fd = next;
        p += n + 1;
    }
}

/* ---- writing ---- */

/* What a failed write says about the run: a file system that is full,
 * read-only or failing ends it (LD_EIO); anything about one name (a folder
 * or socket there, a FIFO with no reader, a link, no permission) is
 * LD_EINVAL, so a dataset run fails that image and goes on. */
static int write_status(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EIO || e == EROFS || e == ENOMEM ? LD_EIO
                                                                               : LD_EINVAL;
}

static int write_all(int fd, const void *buf, size_t len, const char *shown, char *err)
{
    const uint8_t *p = buf;
    while (len > 0) {
        const ssize_t put = write(fd, p, len);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* a non-blocking descriptor we were handed (standard output) */
            struct pollfd pfd = {fd, POLLOUT, 0};
            if (poll(&pfd, 1, -1) >= 0 || errno == EINTR)
                continue;
        }
        if (put < 0)
            return ld_fail(err, write_status(errno), "%s: %s", shown, strerror(errno));
        p += put;
        len -= (size_t)put;
    }
    return LD_OK;
}

static const char *open_error(int e, unsigned mode)
{
    return e == ENXIO && S_ISFIFO(mode) ? "a FIFO with no reader: not written"
           : e == ENXIO && S_ISSOCK(mode) ? "a socket: not written"
           : e == ELOOP                   ? "a symbolic link, not followed"
                                          : strerror(e);
}

/* The descriptor a name stands for, or -1: /dev/stdout, /dev/stderr,
 * /dev/fd/N and /proc/self/fd/N name a stream already open, which is
 * written as it is (a terminal, a pipe, a file the shell opened), and the
 * link in /dev is never renamed over. */
static int named_stream(const char *path)
{
    if (strcmp(path, "/dev/stdout") == 0)
        return STDOUT_FILENO;
    if (strcmp(path, "/dev/stderr") == 0)
        return STDERR_FILENO;
    const char *num = strncmp(path, "/dev/fd/", 8) == 0          ? path + 8
                      : strncmp(path, "/proc/self/fd/", 14) == 0 ? path + 14
                                                                 : NULL;
    if (!num || *num < '0' || *num > '9')
        return -1;
    char *end;
    errno = 0;
    const long n = strtol(num, &end, 10);
    return *end || errno || n > INT_MAX ? -1 : (int)n;
}

/* When name (in dir_fd; a link at it never followed) is a FIFO, character
 * device or socket, open it for writing into *fd and return 1; 0 when it is
 * anything else (nothing opened); or an error.  A block device is refused:
 * an image is no disk's content.  Checked again once open, so a file
 * swapped in between is never written into.  wait: a FIFO's open waits for
 * its reader, as a shell's redirection does; else no reader is an error. */
static int open_special(int dir_fd, const char *name, bool wait, const char *shown, int *fd,
                        char *err)
{
    struct stat st;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !ld_is_special(st.st_mode))
        return 0;
    if (S_ISBLK(st.st_mode))
        return ld_fail(err, LD_EINVAL, "%s: a block device: not written", shown);
    const int opened = openat(dir_fd, name,
                              O_WRONLY | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW |
                                  (wait ? 0 : O_NONBLOCK));
    if (opened < 0) {
        const int e = errno;
        return ld_fail(err, write_status(e), "%s: %s", shown, open_error(e, st.st_mode));
    }
    int rc = 1;
    int fl;
    if (fstat(opened, &st) != 0 || !ld_is_special(st.st_mode))
        rc = 0;
    else if (S_ISBLK(st.st_mode))
        rc = ld_fail(err, LD_EINVAL, "%s: a block device: not written", shown);
    /* the writes themselves block, as they always did: a reader is there */
    else if ((fl = fcntl(opened, F_GETFL)) < 0 || fcntl(opened, F_SETFL, fl & ~O_NONBLOCK) != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", shown, strerror(errno));
    if (rc != 1) {
        close(opened);
        return rc;
    }
    *fd = opened;
    return 1;
}

/* A new empty file beside name in dir_fd under a name of its own
 * (".NAME.PID-N.tmp"), its name in tmp (NAME_MAX + 1 bytes).  O_EXCL and
 * O_NOFOLLOW: a file or link already at the name is never opened, only
 * passed over. */
static int make_temp(int dir_fd, const char *name, const char *shown, char *tmp, int *fd,
                     char *err)
{
    static _Atomic unsigned counter;
    for (int i = 0; i < TEMP_TRIES; i++) {
        snprintf(tmp, NAME_MAX + 1, ".%.200s.%ld-%u.tmp", name, (long)getpid(),
                 atomic_fetch_add(&counter, 1));
        *fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC,
                     0666);
        if (*fd >= 0)
            return LD_OK;
        if (errno != EEXIST)
            return ld_fail(err, write_status(errno),
                           "%s: cannot make a temporary file beside it: %s", shown,
                           strerror(errno));
    }
    return ld_fail(err, LD_EIO, "%s: %d temporary names beside it are all taken", shown,
                   TEMP_TRIES);
}

/* A temporary file made and renamed over name at once; it stays open for
 * the writing (ld_create_file) or is written first (ld_write_at). */
static int replace(int dir_fd, const char *name, const char *shown, const void *buf,
                   size_t len, bool keep_open, int *fd_out, char *err)
{
    char tmp[NAME_MAX + 1];
    int fd = -1;
    int rc = make_temp(dir_fd, name, shown, tmp, &fd, err);
    if (rc != LD_OK)
        return rc;
    if (len)
        rc = write_all(fd, buf, len, shown, err);
    if (!keep_open && close(fd) != 0 && rc == LD_OK)
        rc = ld_fail(err, write_status(errno), "%s: %s", shown, strerror(errno));
    /* over a link at name too: the link is replaced, what it leads to untouched */
    if (rc == LD_OK && renameat(dir_fd, tmp, dir_fd, name) != 0)
        rc = ld_fail(err, write_status(errno), "%s: %s", shown, strerror(errno));
    if (rc != LD_OK) {
        unlinkat(dir_fd, tmp, 0);
        if (keep_open)
            close(fd);
        return rc;
    }
    if (keep_open)
        *fd_out = fd;
    return LD_OK;
}

static int write_at(int dir_fd, const char *name, bool wait, const char *shown,
                    const void *buf, size_t len, char *err)
{
    int fd = -1;
    int rc = open_special(dir_fd, name, wait, shown, &fd, err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return replace(dir_fd, name, shown, buf, len, false, NULL, err);
    rc = write_all(fd, buf, len, shown, err);
    if (close(fd) != 0 && rc == LD_OK)
        rc = ld_fail(err, write_status(errno), "%s: %s", shown, strerror(errno));
    return rc;
}

int ld_write_at(int dir_fd, const char *name, const char *shown, const void *buf, size_t len,
                char *err)
{
    /* one of many outputs: a FIFO nobody reads fails this one, never hangs the run */
    return write_at(dir_fd, name, false, shown, buf, len, err);
}

/* The folder of a path the user named, opened (made first), and its last name. */
static int open_parent(const char *path, int *dir_fd, const char **leaf, char *err)
{
    const char *slash = strrchr(path, '/');
    *leaf = slash ? slash + 1 : path;
    if (!**leaf)
        return ld_fail(err, LD_EINVAL, "%s: names a folder, not a file", path);
    char dir[PATH_MAX] = ".";
    if (slash) {
        const size_t n = slash == path ? 1 : (size_t)(slash - path); /* "/x": the root */
        if (n >= sizeof dir)
            return ld_fail(err, LD_EINVAL, "%s: path too long", path);
        memcpy(dir, path, n);
        dir[n] = '\0';
        const int rc = make_folders(dir, err);
        if (rc != LD_OK)
            return rc;
    }
    *dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (*dir_fd < 0)
        return ld_fail(err, LD_EIO, "%s: %s", dir, strerror(errno));
    return LD_OK;
}

int ld_write_file(const char *path, const void *buf, size_t len, char *err)
{
    if (strcmp(path, "-") == 0)
        return write_all(STDOUT_FILENO, buf, len, "standard output", err);
    const int stream = named_stream(path);
    if (stream >= 0)
        return write_all(stream, buf, len, path, err);
    int dir_fd;
    const char *leaf;
    int rc = open_parent(path, &dir_fd, &leaf, err);
    if (rc == LD_OK) {
        rc = write_at(dir_fd, leaf, true, path, buf, len, err);
        close(dir_fd);
    }
    return rc;
}

/* A descriptor of our own on a stream a name stands for (the caller closes it). */
static int dup_stream(int stream, const char *path, int *fd, char *err)
{
    *fd = fcntl(stream, F_DUPFD_CLOEXEC, 3);
    if (*fd < 0)
        return ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    return LD_OK;
}

int ld_create_file(const char *path, int *fd, char *err)
{
    const int stream = named_stream(path);
    if (stream >= 0)
        return dup_stream(stream, path, fd, err);
    int dir_fd;
    const char *leaf;
    int rc = open_parent(path, &dir_fd, &leaf, err);
    if (rc != LD_OK)
        return rc;
    rc = open_special(dir_fd, leaf, true, path, fd, err);
    if (rc == 0)
        rc = replace(dir_fd, leaf, path, NULL, 0, true, fd, err);
    close(dir_fd);
    return rc < 0 ? rc : LD_OK;
}

int ld_open_append(const char *path, int *fd, char *err)
{
    const int stream = named_stream(path);
    if (stream >= 0)
        return dup_stream(stream, path, fd, err);
    /* no O_TRUNC and no rename: a log keeps what it holds.  O_NOFOLLOW: a
     * link planted at the name is not followed; O_NONBLOCK: a FIFO with no
     * reader is an error (ENXIO), not an open that waits for ever. */
    *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW |
                         O_NONBLOCK,
               0666);
    if (*fd < 0) {
        const int e = errno;
        return ld_fail(err, LD_EIO, "%s: %s", path, open_error(e, e == ENXIO ? S_IFIFO : 0));
    }
    struct stat st;
    int fl;
    int rc = LD_OK;
    if (fstat(*fd, &st) != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    else if (S_ISBLK(st.st_mode))
        rc = ld_fail(err, LD_EINVAL, "%s: a block device: not written", path);
    /* a reader is there: log lines wait for it, as they always did */
    else if ((fl = fcntl(*fd, F_GETFL)) < 0 || fcntl(*fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
        rc = ld_fail(err, LD_EIO, "%s: %s", path, strerror(errno));
    if (rc != LD_OK) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}
