/* timing.c: wall-clock timing and timing.json (contract: --repeat). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cli.h"

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int cli_write_timing(const char *out, int64_t runs, double *times,
                     size_t peak) {
  char text[256];
  int64_t k = runs > 0 ? runs : 1;
  qsort(times, (size_t)k, sizeof *times, cmp_double);
  double median = k % 2 ? times[k / 2] : 0.5 * (times[k / 2 - 1] + times[k / 2]);
  snprintf(text, sizeof text,
           "{\"runs\": %lld, \"median_s\": %.9g, \"min_s\": %.9g, "
           "\"max_s\": %.9g, \"peak_bytes\": %zu}\n",
           (long long)runs, median, times[0], times[k - 1], peak);
  return cli_write_text(out, "timing.json", text);
}
