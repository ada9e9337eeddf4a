/* File I/O: whole-file reads and atomic writes (temporary name, fsync, rename),
 * so an interrupted run never leaves a partial output behind. */
#include "core.h"
#include <dirent.h>
#include <errno.h>
#include <signal.h>
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

/* Remove PATH.tmp.PID files that a killed run left behind (their process is gone). */
static void remove_stale_temporaries(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    const char *base = slash ? slash + 1 : path;
    size_t dl = slash ? (size_t)(slash - path) : 0, bl = strlen(base);
    if (dl + 1 >= sizeof dir) return;
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (!dl) snprintf(dir, sizeof dir, "/");
    else { memcpy(dir, path, dl); dir[dl] = 0; }
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        const char *n = e->d_name, *q;
        if (strncmp(n, base, bl) || strncmp(n + bl, ".tmp.", 5)) continue;
        for (q = n + bl + 5; *q >= '0' && *q <= '9'; q++) {}
        long pid = strtol(n + bl + 5, NULL, 10);
        if (*q || q == n + bl + 5 || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char full[8192];
        struct stat sb;
        snprintf(full, sizeof full, "%s/%s", dir, n);
        if (!lstat(full, &sb) && S_ISREG(sb.st_mode)) unlink(full);
    }
    closedir(d);
}

bq_status bq_write_file_atomic(const char *path, const void *data, size_t size)
{
    struct stat sb;
    if (!lstat(path, &sb) && !S_ISREG(sb.st_mode))
        return bq_fail(BQ_ERR_IO, "'%s' exists and is not a regular file (%s); refusing to replace it", path,
                       S_ISLNK(sb.st_mode) ? "a symbolic link" : S_ISDIR(sb.st_mode) ? "a folder" : "a device, pipe or socket");
    remove_stale_temporaries(path);
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (!tmp) return bq_fail(BQ_ERR_NOMEM, "out of memory");
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);  /* our own pid's leftover, if any */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
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
