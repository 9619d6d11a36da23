/* A read-only FUSE passthrough that behaves like a cloud persistent disk, for bench_coldstart.py
 * --device fuse: every read request waits LATENCY_US and its share of a BANDWIDTH_BPS cap (0: none);
 * libfuse's multithreaded loop serves requests in parallel, so a deep queue pays the latency once per
 * wave; the kernel's read-ahead is 128 KiB (a default cloud disk's read_ahead_kb); page cache as on a
 * block device (no direct_io; kernel_cache: an open keeps the cached pages), so posix_fadvise(DONTNEED)
 * evicts and mincore sees. C, not Python: a Python server tops out near 3k requests/s on two cores.
 * Needs apt fuse3 libfuse3-dev pkg-config gcc; bench_coldstart.py compiles it.
 *
 *   gcc -O2 -o fuse_latency benchmarks/fuse_latency.c $(pkg-config --cflags --libs fuse3)
 *   LATENCY_US=2000 BANDWIDTH_BPS=0 SOURCE=DIR ./fuse_latency MOUNTPOINT -f -o ro,max_threads=256
 */
#define FUSE_USE_VERSION 31
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *source;
static double latency_s, bandwidth;
static double link_free_at; /* when the capped link has sent every byte asked so far */
static pthread_mutex_t link_lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void real(char *out, const char *path) { snprintf(out, 4096, "%s%s", source, path); }

static void *ld_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    conn->max_readahead = 128 << 10;
    conn->max_background = 64; /* async read-ahead requests in flight: a cloud disk's deep queue */
    conn->congestion_threshold = 48;
    cfg->kernel_cache = 1; /* an open keeps the cached pages, as on a block device */
    cfg->direct_io = 0;
    cfg->entry_timeout = cfg->attr_timeout = 3600.0;
    return NULL;
}

static int ld_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    char p[4096];
    real(p, path);
    return lstat(p, st) ? -errno : 0;
}

static int ld_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    char p[4096];
    real(p, path);
    DIR *d = opendir(p);
    if (!d) return -errno;
    for (struct dirent *e; (e = readdir(d));) fill(buf, e->d_name, NULL, 0, 0);
    closedir(d);
    return 0;
}

static int ld_open(const char *path, struct fuse_file_info *fi) {
    char p[4096];
    real(p, path);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -errno;
    fi->fh = fd;
    fi->keep_cache = 1;
    return 0;
}

static int ld_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    double wait = latency_s;
    if (bandwidth > 0) {
        double t = now();
        pthread_mutex_lock(&link_lock);
        link_free_at = (link_free_at > t ? link_free_at : t) + size / bandwidth;
        if (link_free_at - t > wait) wait = link_free_at - t;
        pthread_mutex_unlock(&link_lock);
    }
    struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
    nanosleep(&ts, NULL);
    ssize_t n = pread(fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int ld_release(const char *path, struct fuse_file_info *fi) { return close(fi->fh); }

static const struct fuse_operations ops = {
    .init = ld_init, .getattr = ld_getattr, .readdir = ld_readdir,
    .open = ld_open, .read = ld_read, .release = ld_release,
};

int main(int argc, char *argv[]) {
    source = getenv("SOURCE");
    if (!source) {
        fprintf(stderr, "set SOURCE to the directory to serve\n");
        return 2;
    }
    latency_s = atof(getenv("LATENCY_US") ? getenv("LATENCY_US") : "2000") / 1e6;
    bandwidth = atof(getenv("BANDWIDTH_BPS") ? getenv("BANDWIDTH_BPS") : "0");
    return fuse_main(argc, argv, &ops, NULL);
}
