/* fuzz_idx.c: the IDX reader (cpk_idx_read), plain and gzip. The bytes go
 * to a temporary file (the reader takes a path); each input is read whole
 * as float32 and, when it has a header, as its first item in int64. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "curvpack.h"
#include "fuzz.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

static char fuzz_idx_path[64];

static void fuzz_idx_cleanup(void) {
  if (fuzz_idx_path[0] != '\0')
    unlink(fuzz_idx_path);
}

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
  cpk_tensor *t = NULL;
  if (fuzz_idx_path[0] == '\0') {
    snprintf(fuzz_idx_path, sizeof fuzz_idx_path, "/tmp/cpk-fuzz-idx-XXXXXX");
    int fd = mkstemp(fuzz_idx_path);
    if (fd < 0)
      abort();
    close(fd);
    atexit(fuzz_idx_cleanup);
  }
  cpk_memory_set_limit(FUZZ_MEMORY_BUDGET);
  FILE *f = fopen(fuzz_idx_path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
    abort();
  for (int pass = 0; pass < 2; pass++) {
    int rc = pass == 0 ? cpk_idx_read(fuzz_idx_path, CPK_F32, 1.0 / 255, 0, &t)
                       : cpk_idx_read(fuzz_idx_path, CPK_I64, 1.0, 1, &t);
    if (rc != CPK_OK) {
      if (t != NULL || cpk_last_error()[0] == '\0')
        __builtin_trap();
      continue;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < cpk_tensor_numel(t); i++)
      sum += cpk_tensor_get(t, i);
    (void)sum;
    cpk_tensor_free(t);
    t = NULL;
  }
  return 0;
}
