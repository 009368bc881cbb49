/* The small-file workload of scripts/bench.sh and scripts/bench-wakeups.sh: N files of 4 KiB
 * created (open O_CREAT, write, close), stat'ed, renamed and unlinked in DIR (made here), each
 * phase timed. Usage: smallfiles DIR N. Prints "create S", "stat S", "rename S", "unlink S". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

#define CHECK(call, what) if ((call) != 0) { perror(what); return 1; }

int main(int argc, char **argv) {
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char a[4096], b[4096], buf[4096];
    struct stat st;
    memset(buf, 'x', sizeof buf);
    CHECK(mkdir(dir, 0755), dir);
    double t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        int fd = open(a, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf) { perror(a); return 1; }
        CHECK(close(fd), a);
    }
    printf("create %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        CHECK(stat(a, &st), a);
    }
    printf("stat %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        snprintf(b, sizeof b, "%s/g%d", dir, i);
        CHECK(rename(a, b), a);
    }
    printf("rename %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(b, sizeof b, "%s/g%d", dir, i);
        CHECK(unlink(b), b);
    }
    printf("unlink %f\n", now() - t);
    CHECK(rmdir(dir), dir);
    return 0;
}
