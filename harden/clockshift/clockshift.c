/* clockshift: LD_PRELOAD shim that steps a process's wall clock, as NTP does.
 *
 * CLOCK_REALTIME (clock_gettime, gettimeofday, time) is shifted by the number
 * of seconds in the file named by $CLOCKSHIFT_FILE, re-read every 100 ms of
 * monotonic time; CLOCK_MONOTONIC and sleeping are untouched (an NTP step
 * never moves them). Built by harden/faults.py with the system C compiler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static double offset_s;
static struct timespec next_read;

static void refresh(void) {
    struct timespec now;
    if (!real_clock_gettime)
        real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec < next_read.tv_sec ||
        (now.tv_sec == next_read.tv_sec && now.tv_nsec < next_read.tv_nsec))
        return;
    next_read = now;
    next_read.tv_nsec += 100000000L;
    if (next_read.tv_nsec >= 1000000000L) {
        next_read.tv_sec += 1;
        next_read.tv_nsec -= 1000000000L;
    }
    const char *path = getenv("CLOCKSHIFT_FILE");
    FILE *file = path ? fopen(path, "r") : NULL;
    if (file) {
        double value;
        if (fscanf(file, "%lf", &value) == 1)
            offset_s = value;
        fclose(file);
    }
}

static void shift(struct timespec *ts) {
    long long ns = (long long)ts->tv_nsec + (long long)(offset_s * 1e9);
    long long sec = ts->tv_sec + ns / 1000000000LL;
    ns %= 1000000000LL;
    if (ns < 0) {
        ns += 1000000000LL;
        sec -= 1;
    }
    ts->tv_sec = sec;
    ts->tv_nsec = ns;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    refresh();
    int result = real_clock_gettime(clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        shift(ts);
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    if (result == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
