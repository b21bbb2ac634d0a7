/*
 * evaluate.c: per-sample cross-entropy and accuracy from logits, and the
 * evaluation of a model on a labelled set (forward passes only, in
 * evaluation mode).
 */
#include <math.h>
#include <string.h>

#include "device_pass.h"
#include "context.h"
#include "engine.h"
#include "train.h"

int cpk__ce_per_sample(const cpk_tensor *logits, const cpk_tensor *labels,
                       double *losses, int64_t *correct) {
  const int64_t b = logits->shape[0], c = logits->shape[1];
  *correct = 0;
  for (int64_t n = 0; n < b; n++) {
    const double y = cpk_tensor_get(labels, n);
    if (!(y >= 0 && y < (double)c))
      return cpk__fail(CPK_ERANGE,
                       "labels: class index %g at sample %lld is outside "
                       "[0, %lld)",
                       y, (long long)n, (long long)c);
    /* l = logsumexp(f) - f_y, with the maximum taken out first. */
    int64_t best = 0;
    double top = cpk_tensor_get(logits, n * c), sum = 0.0;
    for (int64_t k = 1; k < c; k++) {
      double f = cpk_tensor_get(logits, n * c + k);
      if (f > top) {
        top = f;
        best = k;
      }
    }
    for (int64_t k = 0; k < c; k++)
      sum += exp(cpk_tensor_get(logits, n * c + k) - top);
    if (losses != NULL)
      losses[n] = top + log(sum) - cpk_tensor_get(logits, n * c + (int64_t)y);
    *correct += best == (int64_t)y;
  }
  return CPK_OK;
}

/* The model's output for `input` in evaluation mode; *out is freed by the
 * caller. */
static int predict(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
                   cpk_tensor **out) {
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              0};
  cpk__pass pass = {.ctx = ctx, .model = model, .spec = &spec};
  int rc = cpk__check_input(model, input);
  *out = NULL;
  if (rc == CPK_OK)
    rc = cpk__host_only(ctx, "evaluation");
  if (rc != CPK_OK)
    return rc;
  cpk__context_apply_threads(ctx);
  if ((rc = cpk__forward(&pass, input)) == CPK_OK) {
    /* The output stays; everything else goes. */
    *out = pass.acts[model->nlayers];
    pass.acts[model->nlayers] = NULL;
  }
  cpk__pass_release(&pass);
  return rc;
}

int cpk_evaluate(cpk_context *ctx, cpk_model *model, const cpk_tensor *images,
                 const cpk_tensor *labels, int64_t batch, double *loss,
                 double *accuracy) {
  const int64_t n = images->ndim > 0 ? images->shape[0] : 0;
  const int64_t per = n > 0 ? cpk_tensor_numel(images) / n : 0;
  double total = 0.0, *losses = NULL;
  int64_t hits = 0;
  int rc = CPK_OK;
  if (n == 0 || labels->ndim != 1 || labels->shape[0] != n ||
      cpk__is_float(labels->dtype))
    return cpk__fail(CPK_ESHAPE,
                     "evaluate: expected %lld integer labels for %lld images",
                     (long long)n, (long long)n);
  if (batch < 1)
    return cpk__fail(CPK_EINVAL, "evaluate: batch must be >= 1, got %lld",
                     (long long)batch);
  if ((losses = cpk__malloc((size_t)(batch < n ? batch : n) *
                            sizeof *losses)) == NULL)
    return CPK_ENOMEM;
  for (int64_t first = 0; rc == CPK_OK && first < n; first += batch) {
    const int64_t count = n - first < batch ? n - first : batch;
    const size_t isize = cpk_dtype_size(images->dtype);
    const size_t lsize = cpk_dtype_size(labels->dtype);
    int64_t shape[CPK_MAX_DIMS], hit;
    cpk_tensor x, y, *out;
    memcpy(shape, images->shape, (size_t)images->ndim * sizeof *shape);
    shape[0] = count;
    cpk__tensor_view(&x, images->dtype,
                     (char *)images->data + (size_t)(first * per) * isize,
                     images->ndim, shape);
    cpk__tensor_view(&y, labels->dtype,
                     (char *)labels->data + (size_t)first * lsize, 1, &count);
    if ((rc = predict(ctx, model, &x, &out)) != CPK_OK)
      break;
    if (out->ndim != 2)
      rc = cpk__fail(CPK_ESHAPE,
                     "evaluate: the model's output per sample "
                     "must be a vector of class scores, got %d axes",
                     out->ndim - 1);
    else
      rc = cpk__ce_per_sample(out, &y, losses, &hit);
    for (int64_t i = 0; rc == CPK_OK && i < count; i++)
      total += losses[i];
    hits += rc == CPK_OK ? hit : 0;
    cpk_tensor_free(out);
  }
  cpk__free(losses);
  if (rc == CPK_OK) {
    *loss = total / (double)n;
    *accuracy = (double)hits / (double)n;
  }
  return rc;
}
