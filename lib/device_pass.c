/*
 * device_pass.c: what a pass on the CUDA device needs around the layers:
 * which models and requests it covers, the parameters' device copies for
 * the length of a pass, and the entry points that stay on the host.
 */
#include "device.h"
#include "device_pass.h"
#include "model.h"

int cpk__host_only(const cpk_context *ctx, const char *what) {
  if (!cpk__on_cuda(ctx))
    return CPK_OK;
  return cpk__fail(CPK_ENOTSUP,
                   "--device cuda: %s has no CUDA path yet (use --device cpu)",
                   what);
}

int cpk__device_covers(const cpk_context *ctx, const cpk_model *m,
                       unsigned needs, const char *needs_what) {
  if (!cpk__on_cuda(ctx))
    return CPK_OK;
  for (int i = 0; i < m->nlayers; i++)
    if (!m->layers[i]->kind->cuda)
      return cpk__fail(CPK_ENOTSUP,
                       "--device cuda: %s: layer %s has no CUDA path yet "
                       "(use --device cpu)",
                       m->layers[i]->where, m->layers[i]->kind->name);
  if (needs)
    return cpk__fail(CPK_ENOTSUP,
                     "--device cuda: %s has no CUDA path yet (use --device "
                     "cpu)",
                     needs_what);
  return CPK_OK;
}

int cpk__model_to_device(const cpk_context *ctx, cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    for (int p = 0; p < l->nparams; p++) {
      cpk__param *q = &l->params[p];
      cpk_tensor_free(q->dev);
      q->dev = NULL;
      int rc = cpk__tensor_to_device(ctx, q->value, q->value->dtype, &q->dev);
      if (rc != CPK_OK)
        return cpk__fail_prefix(rc, "%s: %s", l->where, q->name);
    }
  }
  return CPK_OK;
}

void cpk__model_release_device(cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    for (int p = 0; p < l->nparams; p++) {
      cpk_tensor_free(l->params[p].dev);
      l->params[p].dev = NULL;
    }
    if (l->kind->drop_cache != NULL)
      l->kind->drop_cache(l);
  }
}
