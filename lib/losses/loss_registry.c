/* loss_registry.c: loss names, scales and the checks the float-target losses share. */
#include <string.h>

#include "loss.h"

static const cpk__loss_def *const losses[] = {
    &cpk__cross_entropy_loss, &cpk__mse_loss, &cpk__bce_with_logits_loss};

const cpk__loss_def *cpk__loss_get(cpk_loss_kind kind) {
  for (size_t i = 0; i < sizeof losses / sizeof losses[0]; i++)
    if (losses[i]->kind == kind)
      return losses[i];
  return NULL;
}

int cpk_loss_parse(const char *name, cpk_loss_kind *out) {
  for (size_t i = 0; i < sizeof losses / sizeof losses[0]; i++)
    if (strcmp(losses[i]->name, name) == 0) {
      *out = losses[i]->kind;
      return CPK_OK;
    }
  return cpk__fail(CPK_EUSAGE,
                   "unknown loss '%s' (expected cross_entropy, mse or "
                   "bce_with_logits)",
                   name);
}

const char *cpk_loss_name(cpk_loss_kind kind) {
  const cpk__loss_def *d = cpk__loss_get(kind);
  return d ? d->name : "unknown";
}

int cpk_reduction_parse(const char *name, cpk_reduction *out) {
  if (strcmp(name, "mean") == 0)
    *out = CPK_REDUCTION_MEAN;
  else if (strcmp(name, "sum") == 0)
    *out = CPK_REDUCTION_SUM;
  else
    return cpk__fail(CPK_EUSAGE,
                     "unknown reduction '%s' (expected mean or sum)", name);
  return CPK_OK;
}

double cpk__loss_scale(const cpk__loss_def *def, cpk_reduction red,
                       const cpk_tensor *f) {
  return red == CPK_REDUCTION_SUM ? 1.0 : 1.0 / (double)def->mean_count(f);
}

double cpk__loss_scale_total(const cpk__loss_def *def, cpk_reduction red,
                             const cpk_tensor *f, int64_t total) {
  if (red == CPK_REDUCTION_SUM)
    return 1.0;
  /* mean_count is the batch size times a count per sample */
  const int64_t per = def->mean_count(f) / f->shape[0];
  return 1.0 / (double)(per * total);
}

int cpk__loss_check_float_target(const cpk__loss_def *def, const cpk_tensor *f,
                                 const cpk_tensor *target) {
  char a[128], b[128];
  if (!cpk__is_float(target->dtype))
    return cpk__fail(CPK_EINVAL,
                     "target: %s expects a float target, got %s", def->name,
                     cpk_dtype_name(target->dtype));
  int same = target->ndim == f->ndim;
  for (int i = 0; same && i < f->ndim; i++)
    same = target->shape[i] == f->shape[i];
  if (!same)
    return cpk__fail(CPK_ESHAPE,
                     "target: %s expects the model output's shape %s, got %s",
                     def->name, cpk_shape_str(a, sizeof a, f->ndim, f->shape),
                     cpk_shape_str(b, sizeof b, target->ndim, target->shape));
  return cpk__check_finite_in(target, f->dtype, "target");
}
