/* fuzz_npy.c: the .npy reader: cpk_npy_parse on the bytes, and
 * cpk_npy_read on the same bytes as a file (its reading loop looks at the
 * header to know where to stop), which must come to the same status.
 * Accepted arrays are converted to float64 and their elements read, so
 * that a wrong shape or stride shows as an out-of-bounds access. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "curvpack.h"
#include "fuzz.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

static char fuzz_npy_path[64];

static void fuzz_npy_cleanup(void) {
  if (fuzz_npy_path[0] != '\0')
    unlink(fuzz_npy_path);
}

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
  cpk_tensor *t = NULL, *d = NULL, *r = NULL;
  cpk_memory_set_limit(FUZZ_MEMORY_BUDGET);
  if (fuzz_npy_path[0] == '\0') {
    snprintf(fuzz_npy_path, sizeof fuzz_npy_path, "/tmp/cpk-fuzz-npy-XXXXXX");
    int fd = mkstemp(fuzz_npy_path);
    if (fd < 0)
      abort();
    close(fd);
    atexit(fuzz_npy_cleanup);
  }
  FILE *f = fopen(fuzz_npy_path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
    abort();
  const int rrc = cpk_npy_read(fuzz_npy_path, &r);
  cpk_tensor_free(r);
  int rc = cpk_npy_parse(data, size, "fuzz.npy", &t);
  if (rc != rrc)
    __builtin_trap(); /* the file and the bytes disagree */
  if (rc != CPK_OK) {
    /* Every failure leaves a message and no tensor. */
    if (t != NULL || cpk_last_error()[0] == '\0')
      __builtin_trap();
    return 0;
  }
  const int64_t n = cpk_tensor_numel(t);
  double sum = 0.0;
  for (int64_t i = 0; i < n; i++)
    sum += cpk_tensor_get(t, i);
  if ((t->dtype == CPK_F32 || t->dtype == CPK_F64) &&
      cpk_tensor_convert(&d, t, CPK_F64) == CPK_OK) {
    for (int64_t i = 0; i < n; i++)
      sum -= cpk_tensor_get(d, i);
  }
  (void)sum;
  cpk_tensor_free(d);
  cpk_tensor_free(t);
  return 0;
}
