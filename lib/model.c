/* model.c: a sequential model: a list of layers, their shapes and
 * parameters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_pass.h"
#include "model.h"

int cpk_model_new(cpk_model **out) {
  cpk_model *m = cpk__calloc(sizeof *m);
  *out = m;
  if (m == NULL)
    return CPK_ENOMEM;
  strcpy(m->source, "<api>");
  return CPK_OK;
}

static void layer_free(cpk__layer *l) {
  if (l == NULL)
    return;
  if (l->kind->destroy)
    l->kind->destroy(l);
  for (int i = 0; i < l->nparams; i++) {
    cpk_tensor_free(l->params[i].value);
    cpk_tensor_free(l->params[i].resident);
  }
  cpk__free(l);
}

void cpk_model_free(cpk_model *m) {
  if (m == NULL)
    return;
  for (int i = 0; i < m->nlayers; i++)
    layer_free(m->layers[i]);
  cpk__free(m->layers);
  cpk__free(m->params);
  cpk__free(m);
}

int cpk__model_append(cpk_model *m, int nwords, char **words,
                      const char *where) {
  const cpk__layer_kind *kind;
  cpk__arg_value vals[16];
  int rc = cpk__layer_kind_find(words[0], &kind);
  if (rc == CPK_ENOTSUP)
    return cpk__fail(rc, "%s: layer '%s' is not supported yet", where,
                     words[0]);
  if (rc == CPK_EUSAGE)
    return cpk__fail(rc, "%s: unknown layer '%s'", where, words[0]);
  if (m->nlayers == m->cap) {
    int cap = m->cap ? 2 * m->cap : 8;
    cpk__layer **grown = cpk__malloc((size_t)cap * sizeof *grown);
    if (grown == NULL)
      return CPK_ENOMEM;
    if (m->nlayers)
      memcpy(grown, m->layers, (size_t)m->nlayers * sizeof *grown);
    cpk__free(m->layers);
    m->layers = grown;
    m->cap = cap;
  }
  cpk__layer *l = cpk__calloc(sizeof *l);
  if (l == NULL)
    return CPK_ENOMEM;
  l->kind = kind;
  l->index = m->nlayers;
  snprintf(l->where, sizeof l->where, "%s: %s", where, words[0]);
  rc = cpk__args_bind(kind->args, kind->nargs, nwords - 1, words + 1, vals,
                      l->where);
  if (rc == CPK_OK)
    rc = kind->configure(l, vals);
  if (rc != CPK_OK) {
    layer_free(l);
    return rc;
  }
  m->layers[m->nlayers++] = l;
  m->built = 0;
  return CPK_OK;
}

int cpk_model_num_layers(const cpk_model *m) { return m->nlayers; }

const char *cpk_model_layer_name(const cpk_model *m, int index) {
  if (index < 0 || index >= m->nlayers)
    return NULL;
  return m->layers[index]->kind->name;
}

int cpk_model_build(cpk_model *m, int ndim, const int64_t *shape,
                    cpk_dtype dtype) {
  char buf[128];
  int rc, total = 0;
  if (m->nlayers == 0)
    return cpk__fail(CPK_EINVAL, "%s: the model has no layers", m->source);
  if (!cpk__is_float(dtype))
    return cpk__fail(CPK_EINVAL, "model dtype must be float32 or float64");
  if (ndim < 1 || ndim > CPK_MAX_DIMS - 1)
    return cpk__fail(CPK_ESHAPE, "input sample shape %s: expected 1 to %d axes",
                     cpk_shape_str(buf, sizeof buf, ndim, shape),
                     CPK_MAX_DIMS - 1);
  for (int i = 0; i < ndim; i++)
    if (shape[i] <= 0)
      return cpk__fail(CPK_ESHAPE, "input sample shape %s has an empty axis",
                       cpk_shape_str(buf, sizeof buf, ndim, shape));
  m->built = 0;
  cpk__model_free_device(m); /* the parameters are made anew */
  m->dtype = dtype;
  m->in_ndim = ndim;
  memcpy(m->in_shape, shape, (size_t)ndim * sizeof *shape);
  int in_ndim = ndim;
  const int64_t *in_shape = shape;
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    for (int p = 0; p < l->nparams; p++)
      cpk_tensor_free(l->params[p].value);
    l->nparams = 0;
    l->in_ndim = in_ndim;
    memcpy(l->in_shape, in_shape, (size_t)in_ndim * sizeof *in_shape);
    if ((rc = l->kind->build(l)) != CPK_OK)
      return rc;
    int64_t numel;
    if ((rc = cpk__shape_numel(l->out_ndim, l->out_shape, &numel,
                               l->where)) != CPK_OK)
      return rc;
    if (numel <= 0)
      return cpk__fail(CPK_ESHAPE, "%s: output shape %s is empty", l->where,
                       cpk_shape_str(buf, sizeof buf, l->out_ndim,
                                     l->out_shape));
    for (int p = 0; p < l->nparams; p++) {
      cpk__param *q = &l->params[p];
      if ((rc = cpk_tensor_new(&q->value, dtype, q->ndim, q->shape)) != CPK_OK)
        return cpk__fail_prefix(rc, "%s: parameter %s", l->where, q->name);
    }
    total += l->nparams;
    in_ndim = l->out_ndim;
    in_shape = l->out_shape;
  }
  cpk__free(m->params);
  m->params = cpk__calloc((size_t)(total ? total : 1) * sizeof *m->params);
  if (m->params == NULL)
    return CPK_ENOMEM;
  m->nparams = 0;
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++) {
      struct cpk__model_param *q = &m->params[m->nparams++];
      snprintf(q->name, sizeof q->name, "%d.%s", i,
               m->layers[i]->params[p].name);
      q->layer = m->layers[i];
      q->slot = p;
    }
  m->built = 1;
  return CPK_OK;
}

int cpk_model_output_shape(const cpk_model *m, int *ndim, int64_t *shape) {
  if (!m->built)
    return cpk__fail(CPK_EINVAL, "the model is not built (cpk_model_build)");
  const cpk__layer *last = m->layers[m->nlayers - 1];
  *ndim = last->out_ndim;
  memcpy(shape, last->out_shape, (size_t)last->out_ndim * sizeof *shape);
  return CPK_OK;
}

int cpk_model_num_params(const cpk_model *m) { return m->built ? m->nparams : 0; }

int cpk_model_param(const cpk_model *m, int i, const char **name,
                    cpk_tensor **tensor) {
  if (!m->built || i < 0 || i >= m->nparams)
    return cpk__fail(CPK_EINVAL, "no parameter %d (the model has %d)", i,
                     m->built ? m->nparams : 0);
  cpk__param *q = &m->params[i].layer->params[m->params[i].slot];
  if (name)
    *name = m->params[i].name;
  if (tensor) {
    *tensor = q->value;
    q->stale = 1; /* the caller may write it: its device copy is refreshed */
  }
  return CPK_OK;
}

void cpk_model_params_changed(cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++)
      m->layers[i]->params[p].stale = 1;
}

int cpk_model_param_trainable(const cpk_model *m, int i) {
  return m->built && i >= 0 && i < m->nparams &&
         m->params[i].layer->params[m->params[i].slot].trainable;
}

int64_t cpk_model_param_count(const cpk_model *m) {
  int64_t n = 0;
  for (int i = 0; m->built && i < m->nparams; i++) {
    const cpk__param *p = &m->params[i].layer->params[m->params[i].slot];
    if (p->trainable)
      n += cpk_tensor_numel(p->value);
  }
  return n;
}
