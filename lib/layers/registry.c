/* registry.c: model-file names of the layer kinds. A contract layer that has
 * no kind yet (NULL) is refused as "not supported yet". */
#include <string.h>

#include "layer.h"

static const struct {
  const char *name;
  const cpk__layer_kind *kind;
} registry[] = {
    {"linear", &cpk__linear_kind},
    {"relu", &cpk__relu_kind},
    {"sigmoid", &cpk__sigmoid_kind},
    {"tanh", &cpk__tanh_kind},
    {"leaky_relu", &cpk__leaky_relu_kind},
    {"elu", &cpk__elu_kind},
    {"selu", &cpk__selu_kind},
    {"logsigmoid", &cpk__logsigmoid_kind},
    {"identity", &cpk__identity_kind},
    {"exp", &cpk__exp_kind},
    {"log", &cpk__log_kind},
    {"flatten", &cpk__flatten_kind},
    {"dropout", &cpk__dropout_kind},
    {"conv1d", &cpk__conv1d_kind},
    {"conv2d", &cpk__conv2d_kind},
    {"conv3d", &cpk__conv3d_kind},
    {"conv_transpose1d", &cpk__conv_transpose1d_kind},
    {"conv_transpose2d", &cpk__conv_transpose2d_kind},
    {"conv_transpose3d", &cpk__conv_transpose3d_kind},
    {"maxpool1d", &cpk__maxpool1d_kind},
    {"maxpool2d", &cpk__maxpool2d_kind},
    {"maxpool3d", &cpk__maxpool3d_kind},
    {"avgpool1d", &cpk__avgpool1d_kind},
    {"avgpool2d", &cpk__avgpool2d_kind},
    {"avgpool3d", &cpk__avgpool3d_kind},
    {"adaptive_avgpool2d", &cpk__adaptive_avgpool2d_kind},
    {"zeropad2d", &cpk__zeropad2d_kind},
    {"batchnorm1d", &cpk__batchnorm1d_kind},
    {"batchnorm2d", &cpk__batchnorm2d_kind},
};

int cpk__layer_kind_find(const char *name, const cpk__layer_kind **out) {
  for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++) {
    if (strcmp(registry[i].name, name) != 0)
      continue;
    *out = registry[i].kind;
    return registry[i].kind ? CPK_OK : CPK_ENOTSUP;
  }
  *out = NULL;
  return CPK_EUSAGE;
}

int cpk__layer_declare_param(cpk__layer *l, const char *name, int trainable,
                             int ndim, const int64_t *shape) {
  if (l->nparams == CPK__MAX_PARAMS)
    return cpk__fail(CPK_EINVAL, "%s: too many parameters", l->where);
  cpk__param *p = &l->params[l->nparams++];
  memset(p, 0, sizeof *p);
  strncpy(p->name, name, sizeof p->name - 1);
  p->ndim = ndim;
  memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);
  p->trainable = trainable;
  return CPK_OK;
}

int64_t cpk__layer_in_numel(const cpk__layer *l) {
  int64_t n = 1;
  for (int i = 0; i < l->in_ndim; i++)
    n *= l->in_shape[i];
  return n;
}

int64_t cpk__layer_out_numel(const cpk__layer *l) {
  int64_t n = 1;
  for (int i = 0; i < l->out_ndim; i++)
    n *= l->out_shape[i];
  return n;
}

void cpk__init_uniform(cpk_tensor *t, double bound, cpk__rng *rng) {
  int64_t n = cpk_tensor_numel(t);
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, bound * (2.0 * cpk__rng_uniform(rng) - 1.0));
}
