/*
 * device_pass.c: what a pass on the CUDA device needs around the layers:
 * which models and requests it covers, the parameters' device copies (kept
 * by the model from pass to pass, made again where stale or made on
 * another device handle), and the entry points that stay on the host.
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

/* Bring parameter q's resident copy up to date for a pass on ctx. */
static int refresh(const cpk_context *ctx, cpk__param *q) {
  cpk_tensor *r = q->resident;
  int rc = CPK_OK;
  if (r != NULL && r->device == ctx->gpu && !q->stale)
    return CPK_OK;
  if (r != NULL && r->device == ctx->gpu) {
    rc = cpk__tensor_fill_from_host(ctx, r, q->value);
  } else {
    cpk_tensor_free(r); /* none, or another context's */
    q->resident = NULL;
    rc = cpk__tensor_to_device(ctx, q->value, q->value->dtype, &q->resident);
  }
  if (rc == CPK_OK)
    q->stale = 0;
  return rc;
}

int cpk__model_to_device(const cpk_context *ctx, cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    for (int p = 0; p < l->nparams; p++) {
      int rc = refresh(ctx, &l->params[p]);
      if (rc != CPK_OK)
        return cpk__fail_prefix(rc, "%s: %s", l->where, l->params[p].name);
      l->params[p].dev = l->params[p].resident;
    }
  }
  return CPK_OK;
}

/* Take the copies out of place. */
static void unplace(cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++)
      m->layers[i]->params[p].dev = NULL;
}

void cpk__model_release_device(cpk_model *m) {
  unplace(m);
  for (int i = 0; i < m->nlayers; i++)
    if (m->layers[i]->kind->drop_cache != NULL)
      m->layers[i]->kind->drop_cache(m->layers[i]);
}

int cpk__model_copy_params(const cpk_context *ctx, cpk_model *m,
                           cpk_tensor **slots) {
  int rc = cpk__model_to_device(ctx, m);
  for (int i = 0; rc == CPK_OK && i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    for (int p = 0; rc == CPK_OK && p < l->nparams; p++)
      rc = cpk__tensor_to_device(ctx, l->params[p].dev, l->params[p].dev->dtype,
                                 &slots[i * CPK__MAX_PARAMS + p]);
  }
  unplace(m);
  return rc;
}

void cpk__model_free_device(cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++) {
      cpk_tensor_free(m->layers[i]->params[p].resident);
      m->layers[i]->params[p].resident = NULL;
    }
}
