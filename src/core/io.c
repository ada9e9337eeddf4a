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

/* A file written piece by piece under a temporary name, renamed into place by
 * bq_afile_commit (nothing is lost if the writer stops half way). */
struct bq_afile { int fd, err; char *tmp, *path; };

bq_status bq_afile_open(const char *path, bq_afile **out)
{
    *out = NULL;
    struct stat sb;
    if (!lstat(path, &sb) && !S_ISREG(sb.st_mode))
        return bq_fail(BQ_ERR_IO, "'%s' exists and is not a regular file (%s); refusing to replace it", path,
                       S_ISLNK(sb.st_mode) ? "a symbolic link" : S_ISDIR(sb.st_mode) ? "a folder" : "a device, pipe or socket");
    remove_stale_temporaries(path);
    size_t len = strlen(path);
    bq_afile *f = calloc(1, sizeof *f);
    char *tmp = malloc(len + 32), *dst = strdup(path);
    if (!f || !tmp || !dst) { free(f); free(tmp); free(dst); return bq_fail(BQ_ERR_NOMEM, "out of memory"); }
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);  /* our own pid's leftover, if any */
    f->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
    if (f->fd < 0) {
        bq_status st = bq_fail(BQ_ERR_IO, "cannot create '%s': %s", tmp, strerror(errno));
        free(tmp); free(dst); free(f);
        return st;
    }
    f->tmp = tmp;
    f->path = dst;
    *out = f;
    return BQ_OK;
}

void bq_afile_write(bq_afile *f, const void *data, size_t size)
{
    const char *p = data;
    while (size && !f->err) {
        ssize_t k = write(f->fd, p, size);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) { f->err = errno ? errno : EIO; break; }
        p += k;
        size -= (size_t)k;
    }
}

void bq_afile_abort(bq_afile *f)
{
    if (!f) return;
    close(f->fd);
    unlink(f->tmp);
    free(f->tmp); free(f->path); free(f);
}

bq_status bq_afile_commit(bq_afile *f)
{
    int err = f->err;
    if (!err && fsync(f->fd) != 0) err = errno;
    if (close(f->fd) != 0 && !err) err = errno;
    f->fd = -1;
    if (!err && rename(f->tmp, f->path) != 0) err = errno;
    bq_status st = err ? bq_fail(BQ_ERR_IO, "writing '%s' failed: %s", f->path, strerror(err)) : BQ_OK;
    if (err) unlink(f->tmp);
    free(f->tmp); free(f->path); free(f);
    return st;
}

bq_status bq_write_file_atomic(const char *path, const void *data, size_t size)
{
    bq_afile *f;
    bq_status st = bq_afile_open(path, &f);
    if (st) return st;
    bq_afile_write(f, data, size);
    return bq_afile_commit(f);
}
