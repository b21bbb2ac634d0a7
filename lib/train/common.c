/* common.c: small helpers of the training files (train.h). */
#include <stdio.h>
#include <string.h>

#include "train.h"

void cpk__train_to_double(const cpk_tensor *t, double *dst) {
  const int64_t n = cpk_tensor_numel(t);
  if (t->dtype == CPK_F32) {
    const float *x = t->data;
    for (int64_t i = 0; i < n; i++)
      dst[i] = x[i];
  } else {
    memcpy(dst, t->data, (size_t)n * sizeof *dst);
  }
}

const cpk_tensor *cpk__train_find(const cpk_results *r, const char *param,
                                  const char *suffix) {
  char name[96];
  snprintf(name, sizeof name, "%s.%s", param, suffix);
  return cpk_results_find(r, name);
}

int cpk__train_need(const cpk_results *r, const char *param, const char *suffix,
                    int64_t n, const cpk_tensor **out) {
  char name[96];
  *out = cpk__train_find(r, param, suffix);
  if (*out == NULL)
    return cpk__fail(CPK_EINVAL, "the pass results lack %s.%s", param, suffix);
  if (cpk_tensor_numel(*out) != n)
    return cpk__fail(CPK_ESHAPE, "%s.%s: expected %lld elements, found %lld",
                     param, suffix, (long long)n,
                     (long long)cpk_tensor_numel(*out));
  snprintf(name, sizeof name, "%s.%s", param, suffix);
  return cpk__require_host(*out, name);
}

const cpk__param *cpk__train_param(const cpk_model *m, int i) {
  return &m->params[i].layer->params[m->params[i].slot];
}
