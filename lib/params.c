/* params.c: the parameter directory (contract.md: DIR/INDEX.NAME.npy, the
 * keys and layouts of a PyTorch state_dict) and default initialisation. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

static cpk__param *model_param(const cpk_model *m, int i) {
  return &m->params[i].layer->params[m->params[i].slot];
}

static int require_built(const cpk_model *m) {
  if (!m->built)
    return cpk__fail(CPK_EINVAL,
                     "%s: the model is not built (cpk_model_build first)",
                     m->source);
  return CPK_OK;
}

int cpk_model_init_params(cpk_model *m, uint64_t seed) {
  cpk__rng rng;
  int rc = require_built(m);
  if (rc != CPK_OK)
    return rc;
  cpk__rng_seed(&rng, seed);
  cpk_model_params_changed(m);
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    if (l->kind->init && (rc = l->kind->init(l, &rng)) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

static int load_one(cpk_model *m, int i, const char *dir) {
  char path[PATH_MAX], want[128], got[128];
  cpk__param *p = model_param(m, i);
  const cpk__layer *l = m->params[i].layer;
  cpk_tensor *t = NULL;
  snprintf(path, sizeof path, "%s/%s.npy", dir, m->params[i].name);
  int rc = cpk_npy_read(path, &t);
  if (rc != CPK_OK)
    return cpk__fail_prefix(rc, "parameter %s (%s)", m->params[i].name,
                            l->where);
  int same = t->ndim == p->ndim;
  for (int d = 0; same && d < p->ndim; d++)
    same = t->shape[d] == p->shape[d];
  if (!cpk__is_float(t->dtype))
    rc = cpk__fail(CPK_EINVAL, "%s: parameter %s must be float32 or float64, "
                   "found %s", path, m->params[i].name,
                   cpk_dtype_name(t->dtype));
  else if (!same)
    rc = cpk__fail(CPK_ESHAPE,
                   "%s: parameter %s of %s: expected shape %s, found %s", path,
                   m->params[i].name, l->where,
                   cpk_shape_str(want, sizeof want, p->ndim, p->shape),
                   cpk_shape_str(got, sizeof got, t->ndim, t->shape));
  else
    rc = cpk__check_finite_in(t, p->value->dtype, path);
  if (rc == CPK_OK) {
    int64_t n = cpk_tensor_numel(t);
    for (int64_t k = 0; k < n; k++)
      cpk_tensor_set(p->value, k, cpk_tensor_get(t, k));
  }
  cpk_tensor_free(t);
  return rc;
}

int cpk_model_load_params(cpk_model *m, const char *dir) {
  int rc = require_built(m);
  if (rc == CPK_OK)
    cpk_model_params_changed(m);
  for (int i = 0; rc == CPK_OK && i < m->nparams; i++)
    rc = load_one(m, i, dir);
  return rc;
}

int cpk_model_save_params(const cpk_model *m, const char *dir) {
  char path[PATH_MAX];
  int rc = require_built(m);
  for (int i = 0; rc == CPK_OK && i < m->nparams; i++) {
    snprintf(path, sizeof path, "%s/%s.npy", dir, m->params[i].name);
    rc = cpk_npy_write(path, model_param(m, i)->value);
  }
  return rc;
}
