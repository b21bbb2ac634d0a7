/*
 * optim.c: the optimizers of `curvpack train` (the formulas are in
 * curvpack.h at cpk_optim_options). State is float64 whatever the model's
 * dtype: per trainable parameter the prepared update d, the momentum buffer
 * b (Adam: the moments m and v), and the curvature (diag_ggn: a diagonal;
 * kfac: the factors G [m, m] and A [n, n] of the weight viewed as a matrix
 * [m, n] = [shape[0], numel / shape[0]], or G alone for a bias, with their
 * damped inverse).
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "train.h"

typedef struct slot {
  const char *name; /* "1.weight" (the model's) */
  int trainable;
  int64_t numel;
  int64_t rows, cols; /* kfac: the matrix view; cols = 0 for a vector */
  double *d;          /* the prepared update */
  double *b, *v;      /* momentum (Adam: m) and Adam's v */
  double *diag;       /* diag_ggn's diagonal, once known */
  double *fa, *fb;    /* kfac's factors G and A, once known */
  cpk_kron_inverse *inv;
  int fallback; /* no curvature at the last prepare */
} slot;

struct cpk_optim {
  cpk_optim_options o;
  int nslots;
  slot *s;
  int64_t t; /* steps applied */
  int prepared;
  double *g; /* scratch: one parameter's gradient */
};

static const char *const kind_names[] = {"sgd", "adam", "diag_ggn", "kfac"};

int cpk_optim_parse(const char *name, cpk_optim_kind *out) {
  for (int k = 0; k < 4; k++)
    if (strcmp(name, kind_names[k]) == 0) {
      *out = (cpk_optim_kind)k;
      return CPK_OK;
    }
  return cpk__fail(CPK_EUSAGE,
                   "unknown optimizer '%s' (expected sgd, adam, diag_ggn or "
                   "kfac)",
                   name);
}

const char *cpk_optim_name(cpk_optim_kind kind) {
  return (unsigned)kind < 4 ? kind_names[kind] : "unknown";
}

void cpk_optim_defaults(cpk_optim_kind kind, cpk_optim_options *o) {
  memset(o, 0, sizeof *o);
  o->kind = kind;
  o->beta1 = 0.9;
  o->beta2 = 0.999;
  o->eps = 1e-8;
  o->update_every = 10;
  o->kron_damping = CPK_KRON_DAMP_FACTORED;
  o->ggn_mc = 1;
  switch (kind) {
  case CPK_OPTIM_SGD:
    o->lr = 0.01;
    o->momentum = 0.9;
    break;
  case CPK_OPTIM_ADAM:
    o->lr = 1e-3;
    break;
  case CPK_OPTIM_DIAG_GGN:
    o->lr = 0.01;
    o->momentum = 0.9;
    o->damping = 0.1;
    break;
  case CPK_OPTIM_KFAC:
    o->lr = 0.003;
    o->momentum = 0.9;
    o->damping = 0.1;
    break;
  }
}

int cpk_optim_check(const cpk_optim_options *o) {
  if ((unsigned)o->kind > CPK_OPTIM_KFAC)
    return cpk__fail(CPK_EINVAL, "optimizer: unknown kind %d", (int)o->kind);
  if (!(o->lr > 0.0) || !isfinite(o->lr))
    return cpk__fail(CPK_EINVAL, "optimizer: lr must be > 0, got %g", o->lr);
  if (!(o->momentum >= 0.0 && o->momentum < 1.0))
    return cpk__fail(CPK_EINVAL,
                     "optimizer: momentum must be in [0, 1), got %g",
                     o->momentum);
  if (!(o->weight_decay >= 0.0) || !isfinite(o->weight_decay))
    return cpk__fail(CPK_EINVAL, "optimizer: weight decay must be >= 0, got %g",
                     o->weight_decay);
  if ((o->kind == CPK_OPTIM_DIAG_GGN || o->kind == CPK_OPTIM_KFAC) &&
      (!(o->damping > 0.0) || !isfinite(o->damping)))
    return cpk__fail(CPK_EINVAL, "optimizer: damping must be > 0, got %g",
                     o->damping);
  if (o->kind == CPK_OPTIM_ADAM &&
      (!(o->beta1 >= 0.0 && o->beta1 < 1.0) ||
       !(o->beta2 >= 0.0 && o->beta2 < 1.0) || !(o->eps >= 0.0)))
    return cpk__fail(CPK_EINVAL,
                     "optimizer: adam needs betas in [0, 1) and eps >= 0, got "
                     "(%g, %g) and %g",
                     o->beta1, o->beta2, o->eps);
  if (o->update_every < 1)
    return cpk__fail(CPK_EINVAL,
                     "optimizer: update_every must be >= 1, got "
                     "%lld",
                     (long long)o->update_every);
  if (!(o->ema >= 0.0 && o->ema < 1.0))
    return cpk__fail(CPK_EINVAL, "optimizer: ema must be in [0, 1), got %g",
                     o->ema);
  if (o->kron_damping != CPK_KRON_DAMP_EXACT &&
      o->kron_damping != CPK_KRON_DAMP_FACTORED)
    return cpk__fail(CPK_EINVAL, "optimizer: unknown Kronecker damping %d",
                     (int)o->kron_damping);
  return CPK_OK;
}

void cpk_optim_free(cpk_optim *opt) {
  if (opt == NULL)
    return;
  for (int i = 0; i < opt->nslots; i++) {
    slot *s = &opt->s[i];
    cpk__free(s->d);
    cpk__free(s->b);
    cpk__free(s->v);
    cpk__free(s->diag);
    cpk__free(s->fa);
    cpk__free(s->fb);
    cpk_kron_inverse_free(s->inv);
  }
  cpk__free(opt->s);
  cpk__free(opt->g);
  cpk__free(opt);
}

static double *new_buffer(int64_t n) {
  return cpk__calloc((size_t)n * sizeof(double));
}

int cpk_optim_new(cpk_optim **out, const cpk_optim_options *opts,
                  const cpk_model *m) {
  int rc = cpk_optim_check(opts);
  int64_t largest = 1;
  *out = NULL;
  if (rc != CPK_OK)
    return rc;
  if (!m->built)
    return cpk__fail(CPK_EINVAL, "%s: the model is not built", m->source);
  cpk_optim *opt = cpk__calloc(sizeof *opt);
  if (opt == NULL)
    return CPK_ENOMEM;
  opt->o = *opts;
  opt->nslots = m->nparams;
  if ((opt->s = cpk__calloc((size_t)m->nparams * sizeof *opt->s)) == NULL) {
    rc = CPK_ENOMEM;
    goto fail;
  }
  for (int i = 0; i < m->nparams; i++) {
    slot *s = &opt->s[i];
    const cpk__param *p = cpk__train_param(m, i);
    s->name = m->params[i].name;
    s->trainable = p->trainable;
    s->numel = cpk_tensor_numel(p->value);
    s->rows = p->ndim >= 2 ? p->shape[0] : s->numel;
    s->cols = p->ndim >= 2 ? s->numel / p->shape[0] : 0;
    if (!s->trainable)
      continue;
    largest = s->numel > largest ? s->numel : largest;
    if ((s->d = new_buffer(s->numel)) == NULL ||
        (s->b = new_buffer(s->numel)) == NULL ||
        (opts->kind == CPK_OPTIM_ADAM &&
         (s->v = new_buffer(s->numel)) == NULL)) {
      rc = CPK_ENOMEM;
      goto fail;
    }
  }
  if ((opt->g = new_buffer(largest)) == NULL) {
    rc = CPK_ENOMEM;
    goto fail;
  }
  *out = opt;
  return CPK_OK;
fail:
  cpk_optim_free(opt);
  return rc;
}

/* Whether the pass of the next step refreshes the curvature. */
static int refresh_step(const cpk_optim *opt) {
  return (opt->o.kind == CPK_OPTIM_DIAG_GGN || opt->o.kind == CPK_OPTIM_KFAC) &&
         opt->t % opt->o.update_every == 0;
}

const char *cpk_optim_extensions(const cpk_optim *opt) {
  if (!refresh_step(opt))
    return "";
  if (opt->o.kind == CPK_OPTIM_KFAC)
    return "kfac";
  return opt->o.ggn_mc ? "diag_ggn_mc" : "diag_ggn_exact";
}

/* C := ema C + (1 - ema) C_new, or C := C_new the first time (C NULL). */
static int blend(double **c, const cpk_tensor *fresh, double ema) {
  const int64_t n = cpk_tensor_numel(fresh);
  const int first = *c == NULL;
  if (first && (*c = new_buffer(n)) == NULL)
    return CPK_ENOMEM;
  for (int64_t i = 0; i < n; i++) {
    double x = cpk_tensor_get(fresh, i);
    (*c)[i] = first ? x : ema * (*c)[i] + (1.0 - ema) * x;
  }
  return CPK_OK;
}

/* (Re)build the damped inverse from the factors held. */
static int build_inverse(const cpk_optim *opt, slot *s) {
  cpk_kron_inverse_free(s->inv);
  s->inv = NULL;
  int rc =
      cpk_kron_inverse_new(&s->inv, opt->o.kron_damping, s->rows, s->fa,
                           s->cols, s->cols ? s->fb : NULL, opt->o.damping);
  return rc == CPK_OK ? rc : cpk__fail_prefix(rc, "kfac: %s", s->name);
}

/* Take the fresh curvature of slot s from the pass results. */
static int refresh(cpk_optim *opt, slot *s, const cpk_results *res) {
  const cpk_tensor *t;
  int rc;
  if (opt->o.kind == CPK_OPTIM_DIAG_GGN) {
    const char *suffix = opt->o.ggn_mc ? "diag_ggn_mc" : "diag_ggn_exact";
    if ((rc = cpk__train_need(res, s->name, suffix, s->numel, &t)) != CPK_OK)
      return rc;
    return blend(&s->diag, t, opt->o.ema);
  }
  /* kfac: a parameter without factors keeps taking the identity step. */
  const cpk_tensor *a = cpk__train_find(res, s->name, "kfac.0");
  const cpk_tensor *b =
      s->cols ? cpk__train_find(res, s->name, "kfac.1") : NULL;
  if (a == NULL || (s->cols && b == NULL))
    return CPK_OK;
  if (cpk_tensor_numel(a) != s->rows * s->rows ||
      (b && cpk_tensor_numel(b) != s->cols * s->cols))
    return cpk__fail(CPK_ESHAPE,
                     "kfac: %s: factors of %lld and %lld elements, expected "
                     "%lld x %lld and %lld x %lld",
                     s->name, (long long)cpk_tensor_numel(a),
                     (long long)(b ? cpk_tensor_numel(b) : 0),
                     (long long)s->rows, (long long)s->rows, (long long)s->cols,
                     (long long)s->cols);
  if ((rc = blend(&s->fa, a, opt->o.ema)) != CPK_OK ||
      (b && (rc = blend(&s->fb, b, opt->o.ema)) != CPK_OK))
    return rc;
  return build_inverse(opt, s);
}

/* p := preconditioned g (in place) for the curvature kinds. */
static int precondition(const cpk_optim *opt, slot *s, double *g) {
  s->fallback = 0;
  if (opt->o.kind == CPK_OPTIM_DIAG_GGN) {
    for (int64_t k = 0; k < s->numel; k++)
      g[k] /= s->diag[k] + opt->o.damping;
    return CPK_OK;
  }
  if (s->inv == NULL) { /* no Kronecker factors for this layer */
    s->fallback = 1;
    return CPK_OK;
  }
  return cpk_kron_inverse_apply(s->inv, g, g);
}

int cpk_optim_prepare(cpk_optim *opt, const cpk_model *m,
                      const cpk_results *res) {
  const cpk_optim_options *o = &opt->o;
  const int fresh = refresh_step(opt);
  int rc;
  for (int i = 0; i < opt->nslots; i++) {
    slot *s = &opt->s[i];
    const cpk_tensor *grad;
    if (!s->trainable)
      continue;
    if ((rc = cpk__train_need(res, s->name, "grad", s->numel, &grad)) != CPK_OK)
      return rc;
    if (fresh && (rc = refresh(opt, s, res)) != CPK_OK)
      return rc;
    double *g = opt->g;
    const cpk_tensor *theta = cpk__train_param(m, i)->value;
    cpk__train_to_double(grad, g);
    for (int64_t k = 0; k < s->numel; k++)
      if (!isfinite(g[k]))
        return cpk__fail(CPK_ENONFINITE,
                         "step %lld: the gradient of %s is %g at flat index "
                         "%lld: the training diverged (lower the learning "
                         "rate, or raise the damping)",
                         (long long)opt->t, s->name, g[k], (long long)k);
    if (o->weight_decay != 0.0) /* g += weight_decay * theta */
      for (int64_t k = 0; k < s->numel; k++)
        g[k] += o->weight_decay * cpk_tensor_get(theta, k);
    if (o->kind == CPK_OPTIM_ADAM) {
      /* PyTorch: step = lr / bc1, denom = sqrt(v) / sqrt(bc2) + eps. */
      const double bc1 = 1.0 - pow(o->beta1, (double)(opt->t + 1));
      const double bc2 = 1.0 - pow(o->beta2, (double)(opt->t + 1));
      for (int64_t k = 0; k < s->numel; k++) {
        s->b[k] = o->beta1 * s->b[k] + (1.0 - o->beta1) * g[k];
        s->v[k] = o->beta2 * s->v[k] + (1.0 - o->beta2) * g[k] * g[k];
        s->d[k] = -(o->lr / bc1) * s->b[k] / (sqrt(s->v[k] / bc2) + o->eps);
      }
      continue;
    }
    if (o->kind != CPK_OPTIM_SGD && (rc = precondition(opt, s, g)) != CPK_OK)
      return rc;
    /* b = momentum b + p (b starts at zero: b = p at the first step). */
    for (int64_t k = 0; k < s->numel; k++) {
      s->b[k] = o->momentum * s->b[k] + g[k];
      s->d[k] = -o->lr * s->b[k];
    }
  }
  opt->prepared = 1;
  return CPK_OK;
}

const double *cpk_optim_update(const cpk_optim *opt, int i) {
  return i >= 0 && i < opt->nslots ? opt->s[i].d : NULL;
}

int cpk_optim_apply(cpk_optim *opt, cpk_model *m) {
  if (!opt->prepared)
    return cpk__fail(CPK_EINVAL, "optimizer: apply without prepare");
  cpk_model_params_changed(m);
  for (int i = 0; i < opt->nslots; i++) {
    const slot *s = &opt->s[i];
    if (!s->trainable)
      continue;
    cpk_tensor *theta = cpk__train_param(m, i)->value;
    if (theta->dtype == CPK_F32) {
      float *x = theta->data;
      for (int64_t k = 0; k < s->numel; k++)
        x[k] = (float)((double)x[k] + s->d[k]);
    } else {
      double *x = theta->data;
      for (int64_t k = 0; k < s->numel; k++)
        x[k] += s->d[k];
    }
  }
  opt->prepared = 0;
  opt->t++;
  return CPK_OK;
}

int64_t cpk_optim_steps(const cpk_optim *opt) { return opt->t; }

int cpk_optim_fallback(const cpk_optim *opt, int i) {
  return i >= 0 && i < opt->nslots && opt->s[i].fallback;
}

/* ------------------------------------------------------------ checkpoints
 * DIR/optim.npy int64 [kind, steps]; per trainable parameter P:
 * P.b.npy (momentum or Adam's m), P.v.npy (Adam), P.diag.npy (diag_ggn),
 * P.kfac.0.npy and P.kfac.1.npy (kfac), the curvature ones only once
 * known. */

static int save_vec(const char *dir, const char *name, const char *what,
                    const double *x, int64_t n) {
  char path[PATH_MAX];
  cpk_tensor view;
  snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
  cpk__tensor_view(&view, CPK_F64, (void *)x, 1, &n);
  return cpk_npy_write(path, &view);
}

int cpk_optim_save(const cpk_optim *opt, const char *dir) {
  char path[PATH_MAX];
  int64_t head[2] = {opt->o.kind, opt->t}, two = 2;
  cpk_tensor view;
  snprintf(path, sizeof path, "%s/optim.npy", dir);
  cpk__tensor_view(&view, CPK_I64, head, 1, &two);
  int rc = cpk_npy_write(path, &view);
  for (int i = 0; rc == CPK_OK && i < opt->nslots; i++) {
    const slot *s = &opt->s[i];
    if (!s->trainable)
      continue;
    rc = save_vec(dir, s->name, "b", s->b, s->numel);
    if (rc == CPK_OK && s->v)
      rc = save_vec(dir, s->name, "v", s->v, s->numel);
    if (rc == CPK_OK && s->diag)
      rc = save_vec(dir, s->name, "diag", s->diag, s->numel);
    if (rc == CPK_OK && s->fa)
      rc = save_vec(dir, s->name, "kfac.0", s->fa, s->rows * s->rows);
    if (rc == CPK_OK && s->fb)
      rc = save_vec(dir, s->name, "kfac.1", s->fb, s->cols * s->cols);
  }
  return rc;
}

/* Load DIR/NAME.WHAT.npy (n doubles) into *x (allocated when NULL). A
 * missing optional file leaves *x as it is. */
static int load_vec(const char *dir, const char *name, const char *what,
                    double **x, int64_t n, int optional) {
  char path[PATH_MAX];
  cpk_tensor *t;
  snprintf(path, sizeof path, "%s/%s.%s.npy", dir, name, what);
  FILE *probe = fopen(path, "rb");
  if (probe == NULL && optional)
    return CPK_OK;
  if (probe)
    fclose(probe);
  int rc = cpk_npy_read(path, &t);
  if (rc != CPK_OK)
    return rc;
  if (cpk_tensor_numel(t) != n || !cpk__is_float(t->dtype))
    rc = cpk__fail(CPK_ESHAPE, "%s: expected %lld floats, found %lld of %s",
                   path, (long long)n, (long long)cpk_tensor_numel(t),
                   cpk_dtype_name(t->dtype));
  else if (*x == NULL && (*x = new_buffer(n)) == NULL)
    rc = CPK_ENOMEM;
  if (rc == CPK_OK)
    cpk__train_to_double(t, *x);
  cpk_tensor_free(t);
  return rc;
}

int cpk_optim_load(cpk_optim *opt, const char *dir) {
  char path[PATH_MAX];
  cpk_tensor *head;
  snprintf(path, sizeof path, "%s/optim.npy", dir);
  int rc = cpk_npy_read(path, &head);
  if (rc != CPK_OK)
    return rc;
  if (cpk_tensor_numel(head) != 2 || cpk__is_float(head->dtype))
    rc = cpk__fail(CPK_EFORMAT, "%s: expected 2 integers [kind, steps]", path);
  else if (cpk_tensor_get(head, 0) != (double)opt->o.kind)
    rc =
        cpk__fail(CPK_EINVAL, "%s: state of optimizer %s, this one is %s", path,
                  cpk_optim_name((cpk_optim_kind)cpk_tensor_get(head, 0)),
                  cpk_optim_name(opt->o.kind));
  else
    opt->t = (int64_t)cpk_tensor_get(head, 1);
  cpk_tensor_free(head);
  for (int i = 0; rc == CPK_OK && i < opt->nslots; i++) {
    slot *s = &opt->s[i];
    if (!s->trainable)
      continue;
    rc = load_vec(dir, s->name, "b", &s->b, s->numel, 0);
    if (rc == CPK_OK && s->v)
      rc = load_vec(dir, s->name, "v", &s->v, s->numel, 0);
    if (rc == CPK_OK && opt->o.kind == CPK_OPTIM_DIAG_GGN)
      rc = load_vec(dir, s->name, "diag", &s->diag, s->numel, 1);
    if (rc == CPK_OK && opt->o.kind == CPK_OPTIM_KFAC) {
      rc = load_vec(dir, s->name, "kfac.0", &s->fa, s->rows * s->rows, 1);
      if (rc == CPK_OK && s->cols)
        rc = load_vec(dir, s->name, "kfac.1", &s->fb, s->cols * s->cols, 1);
      if (rc == CPK_OK && s->fa && (s->cols == 0 || s->fb))
        rc = build_inverse(opt, s);
    }
  }
  opt->prepared = 0;
  return rc;
}
