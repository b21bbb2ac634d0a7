/*
 * problems.c: the built-in problems, DeepOBS's architectures for
 * (Fashion-)MNIST written as model files, and DeepOBS's initialisation.
 */
#include <string.h>

#include "model.h"

static const struct problem {
  const char *name;
  const char *text;
  double weight_std; /* 0: zeros */
  double bias;
} problems[] = {
    {"mnist_logreg", "flatten\nlinear 784 10\n", 0.0, 0.0},
    {"fmnist_mlp",
     "flatten\n"
     "linear 784 1000\nrelu\n"
     "linear 1000 500\nrelu\n"
     "linear 500 100\nrelu\n"
     "linear 100 10\n",
     0.03, 0.0},
    /* tf 'same' padding of a 5x5 kernel at stride 1 is 2 on each side; the
     * 2x2 poolings at stride 2 need none on 28 and 14. */
    {"fmnist_2c2d",
     "conv2d 1 32 5 padding=2\nrelu\nmaxpool2d 2\n"
     "conv2d 32 64 5 padding=2\nrelu\nmaxpool2d 2\n"
     "flatten\n"
     "linear 3136 1024\nrelu\n"
     "linear 1024 10\n",
     0.05, 0.05},
};

static const struct problem *find(const char *name) {
  for (size_t i = 0; i < sizeof problems / sizeof problems[0]; i++)
    if (strcmp(problems[i].name, name) == 0)
      return &problems[i];
  return NULL;
}

int cpk_problem_model(const char *name, const char **text) {
  const struct problem *p = find(name);
  if (p == NULL)
    return cpk__fail(CPK_EUSAGE,
                     "unknown problem '%s' (expected fmnist_2c2d, fmnist_mlp "
                     "or mnist_logreg)",
                     name);
  *text = p->text;
  return CPK_OK;
}

/* A normal draw of std `std`, redrawn while outside two standard
 * deviations (TensorFlow's truncated_normal, which DeepOBS follows). */
static double truncated_normal(cpk__rng *rng, double std) {
  double z;
  do
    z = cpk__rng_normal(rng);
  while (z < -2.0 || z > 2.0);
  return std * z;
}

int cpk_problem_init_params(cpk_model *m, const char *name, uint64_t seed) {
  const struct problem *p = find(name);
  cpk__rng rng;
  if (p == NULL)
    return cpk_problem_model(name, &(const char *){NULL});
  if (!m->built)
    return cpk__fail(CPK_EINVAL, "%s: the model is not built", m->source);
  cpk__rng_seed(&rng, seed);
  cpk_model_params_changed(m);
  for (int i = 0; i < m->nparams; i++) {
    const struct cpk__model_param *mp = &m->params[i];
    cpk_tensor *t = mp->layer->params[mp->slot].value;
    const int is_weight =
        strcmp(mp->layer->params[mp->slot].name, "weight") == 0;
    for (int64_t k = 0; k < cpk_tensor_numel(t); k++)
      cpk_tensor_set(t, k,
                     is_weight ? (p->weight_std > 0.0
                                      ? truncated_normal(&rng, p->weight_std)
                                      : 0.0)
                               : p->bias);
  }
  return CPK_OK;
}
