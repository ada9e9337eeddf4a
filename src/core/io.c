/* File I/O: whole-file reads and atomic writes (temporary name, fsync, rename),
 * so an interrupted run never leaves a partial output behind. */
#include "core.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bq_status bq_read_file(const char *path, void **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return bq_fail(BQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return bq_fail(BQ_ERR_IO, "'%s' is not a regular file", path);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n ? n : 1);
    if (!buf) { close(fd); return bq_fail(BQ_ERR_NOMEM, "out of memory reading '%s' (%zu bytes)", path, n); }
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            free(buf);
            close(fd);
            return bq_fail(BQ_ERR_IO, "reading '%s' failed: %s", path, k < 0 ? strerror(errno) : "file shrank");
        }
        got += (size_t)k;
    }
    close(fd);
    *data = buf;
    *size = n;
    return BQ_OK;
}

bq_status bq_write_file_atomic(const char *path, const void *data, size_t size)
{
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (!tmp) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        bq_status st = bq_fail(BQ_ERR_IO, "cannot create '%s': %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    const char *p = data;
    size_t left = size;
    while (left) {
        ssize_t k = write(fd, p, left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        p += k;
        left -= (size_t)k;
    }
    int err = left != 0 || fsync(fd) != 0;
    err |= close(fd) != 0;
    if (err || rename(tmp, path) != 0) {
        bq_status st = bq_fail(BQ_ERR_IO, "writing '%s' failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return BQ_OK;
}
