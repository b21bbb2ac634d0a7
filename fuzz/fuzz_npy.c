/* fuzz_npy.c: the .npy reader (cpk_npy_parse, which cpk_npy_read runs on
 * the file's bytes). Accepted arrays are converted to float64 and back,
 * and their elements read, so that a wrong shape or stride shows as an
 * out-of-bounds access. */
#include <string.h>

#include "curvpack.h"
#include "fuzz.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
  cpk_tensor *t = NULL, *d = NULL;
  cpk_memory_set_limit(FUZZ_MEMORY_BUDGET);
  int rc = cpk_npy_parse(data, size, "fuzz.npy", &t);
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
