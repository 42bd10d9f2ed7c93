/* Files read and written so that the name given is the thing touched, and
 * only that: every reader and writer of the tools goes through here.
 *
 *   uint8_t *data; size_t len;
 *   ld_read_regular("in/a.png", 0, &data, &len, err);   // regular files only, <= 64 MiB
 *   ld_write_file("out.safetensors", buf, n, err);       // atomic; a FIFO or device written
 *                                                        // through; "-" is standard output
 *   int dir; const char *leaf;
 *   ld_tree_dir("latents", "a/b/img.npy", true, &dir, &leaf, err);  // latents/a/b, no links
 *   ld_write_at(dir, leaf, "latents/a/b/img.npy", buf, n, err);
 *   close(dir);
 *
 * Reading: a FIFO, device or socket is refused before a byte is read (a FIFO
 * is opened without waiting for a writer), and so is a file over a size limit.
 * Writing a path that names a regular file or nothing: the bytes go to a
 * fresh temporary file beside it, created with O_EXCL|O_NOFOLLOW under a
 * name no other process uses (".NAME.PID-N.tmp"), which is then renamed over
 * the path; so a reader sees the old file or the whole new one, a link
 * planted at a temporary name is never followed, and two processes writing
 * one path both succeed (the last rename wins).  A symbolic link at the
 * path itself is replaced the same way (the rename takes the link's place),
 * never followed.  A path that names a FIFO, a character device or a socket
 * is opened (O_NOFOLLOW) and written as it is: never renamed over.  A block
 * device is refused.  The names /dev/stdout, /dev/stderr, /dev/fd/N and
 * /proc/self/fd/N stand for the descriptor already open (written whatever
 * it is: a terminal, a pipe, a file the shell opened); the link in /dev is
 * never touched.
 *
 * A failed write is LD_EIO when the file system fails as a whole (full,
 * read-only, an I/O error) and LD_EINVAL when only that name does (a folder
 * or socket there, a FIFO with no reader, no permission), so a dataset run
 * can fail the one image and go on. */
#ifndef LATENTD_SAFEFILE_H
#define LATENTD_SAFEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"

/* The largest input file read when the caller gives 0: the daemon's default
 * max_body_bytes, so a file the CLI takes is one the daemon would. */
#define LD_MAX_FILE_BYTES_DEFAULT ((uint64_t)64 << 20)

/* Open name (relative to dir_fd, or AT_FDCWD) for reading, without waiting
 * on a FIFO and, unless follow, without following a link at name; anything
 * but a regular file is LD_EUNSUPPORTED, one over max_bytes (0: the default)
 * LD_ETOOLARGE, a failed open LD_EIO.  shown names it in messages. */
int ld_open_regular(int dir_fd, const char *name, bool follow, uint64_t max_bytes,
                    const char *shown, int *fd, char *err);
/* The whole of an open file, at most max_bytes (0: the default) even if it
 * grows while read; data is malloc'd. */
int ld_read_fd(int fd, uint64_t max_bytes, const char *shown, uint8_t **data, size_t *len,
               char *err);
/* Both: a whole regular file at path (links followed) into memory. */
int ld_read_regular(const char *path, uint64_t max_bytes, uint8_t **data, size_t *len,
                    char *err);

/* The folder that holds rel below root, opened (O_DIRECTORY) into *dir_fd,
 * and rel's last name in *leaf (pointing into rel).  root is the caller's
 * and may be a link; below it no name is followed that is a symbolic link,
 * and "", "." and ".." are refused (LD_EINVAL), so nothing outside root is
 * reached.  With create, missing folders are made (root too); without, a
 * missing one is LD_EIO. */
int ld_tree_dir(const char *root, const char *rel, bool create, int *dir_fd,
                const char **leaf, char *err);
/* buf to name in dir_fd, as described above; shown names it in messages.
 * A link at name is replaced, never followed; a FIFO at it with no reader
 * is an error at once (one of many outputs never hangs a run). */
int ld_write_at(int dir_fd, const char *name, const char *shown, const void *buf, size_t len,
                char *err);
/* buf to a path the user named ("-": standard output); its folders are made
 * as needed.  A FIFO at it is waited on for its reader, as a shell does. */
int ld_write_file(const char *path, const void *buf, size_t len, char *err);

/* A file to be written a piece at a time (a list of failures): a regular
 * file is replaced at once by an empty one, made as ld_write_file makes its
 * files; a special file is opened as it is.  *fd is the caller's to close. */
int ld_create_file(const char *path, int *fd, char *err);
/* The same for appending (a log): a regular file is opened (made when
 * missing) with O_APPEND; a FIFO or character device as it is, but a link
 * at path is refused (not followed) and so is a FIFO with no reader (no
 * open that waits for ever); the descriptor blocks on writes. */
int ld_open_append(const char *path, int *fd, char *err);

/* Whether st is a file written through rather than replaced. */
bool ld_is_special(unsigned mode);

#endif
