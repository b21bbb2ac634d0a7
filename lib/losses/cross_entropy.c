/*
 * cross_entropy.c: nn.CrossEntropyLoss with class-index targets.
 * f is [N, C, *S] (S: optional spatial axes), the target [N, *S] holds
 * integers in [0, C). With p = softmax over C at each (n, s):
 *   l_{n,s} = logsumexp(f_{n,:,s}) - f_{n,y,s},  dL/df = c (p - onehot(y)).
 */
#include <math.h>

#include "loss.h"
#include "../context.h"

/* Positions per sample: the product of the spatial axes. */
static int64_t spatial(const cpk_tensor *f) {
  int64_t s = 1;
  for (int i = 2; i < f->ndim; i++)
    s *= f->shape[i];
  return s;
}

static int64_t ce_mean_count(const cpk_tensor *f) {
  return f->shape[0] * spatial(f);
}

static int ce_check_target(const cpk_tensor *f, const cpk_tensor *target) {
  char a[128], b[128], t[128];
  if (f->ndim < 2)
    return cpk__fail(CPK_ESHAPE,
                     "cross_entropy expects a model output of shape (N, C, ...)"
                     ", got %s",
                     cpk_shape_str(a, sizeof a, f->ndim, f->shape));
  if (target->dtype != CPK_I64 && target->dtype != CPK_I32)
    return cpk__fail(CPK_EINVAL,
                     "target: cross_entropy expects integer class indices "
                     "(int64 or int32), got %s",
                     cpk_dtype_name(target->dtype));
  int same = target->ndim == f->ndim - 1 && target->shape[0] == f->shape[0];
  for (int i = 1; same && i < target->ndim; i++)
    same = target->shape[i] == f->shape[i + 1];
  if (!same) {
    int64_t want[CPK_MAX_DIMS];
    want[0] = f->shape[0];
    for (int i = 2; i < f->ndim; i++)
      want[i - 1] = f->shape[i];
    return cpk__fail(CPK_ESHAPE,
                     "target: cross_entropy expects class indices of shape %s "
                     "for a model output of shape %s, got %s",
                     cpk_shape_str(a, sizeof a, f->ndim - 1, want),
                     cpk_shape_str(b, sizeof b, f->ndim, f->shape),
                     cpk_shape_str(t, sizeof t, target->ndim, target->shape));
  }
  int64_t n = cpk_tensor_numel(target), classes = f->shape[1];
  for (int64_t i = 0; i < n; i++) {
    double y = cpk_tensor_get(target, i);
    if (y < 0 || y >= (double)classes)
      return cpk__fail(CPK_ERANGE,
                       "target: class index %lld at flat index %lld is out of "
                       "range [0, %lld)",
                       (long long)y, (long long)i, (long long)classes);
  }
  return CPK_OK;
}

/* softmax over the classes at (n, s) into p[0..C); returns the
 * log-sum-exp of the logits there. */
static double softmax_at(const cpk_tensor *f, int64_t base, int64_t classes,
                         int64_t stride, double *p) {
  double mx = -INFINITY, z = 0.0;
  for (int64_t k = 0; k < classes; k++)
    mx = fmax(mx, cpk_tensor_get(f, base + k * stride));
  for (int64_t k = 0; k < classes; k++)
    z += p[k] = exp(cpk_tensor_get(f, base + k * stride) - mx);
  for (int64_t k = 0; k < classes; k++)
    p[k] /= z;
  return mx + log(z);
}

static int ce_value_grad(cpk_context *ctx, double c, const cpk_tensor *f,
                         const cpk_tensor *target, double *loss,
                         cpk_tensor *grad) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  double total = 0.0, *p = cpk__malloc((size_t)classes * sizeof *p);
  if (p == NULL)
    return CPK_ENOMEM;
  for (int64_t i = 0; i < n; i++)
    for (int64_t pos = 0; pos < s; pos++) {
      const int64_t base = i * classes * s + pos;
      const int64_t y = (int64_t)cpk_tensor_get(target, i * s + pos);
      total += softmax_at(f, base, classes, s, p) -
               cpk_tensor_get(f, base + y * s);
      for (int64_t k = 0; k < classes; k++)
        cpk_tensor_set(grad, base + k * s, c * (p[k] - (k == y ? 1.0 : 0.0)));
    }
  cpk__free(p);
  *loss = c * total;
  return CPK_OK;
}

static int64_t ce_sqrt_columns(const cpk_tensor *f) {
  return f->shape[1] * spatial(f);
}

/* Column v = (k, s) of sample n is non-zero only at position s:
 * out[(k,s), n, j, s] = sqrt(c) sqrt(p_j) (delta_kj - sqrt(p_k) sqrt(p_j)),
 * whose outer products sum to c (diag(p) - p p^T) at each position. */
static int ce_sqrt_hessian(cpk_context *ctx, double c, const cpk_tensor *f,
                           const cpk_tensor *target, cpk_tensor *out) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  const int64_t per = classes * s; /* one sample's output size */
  double *p = cpk__malloc((size_t)classes * sizeof *p);
  if (p == NULL)
    return CPK_ENOMEM;
  for (int64_t i = 0; i < n; i++)
    for (int64_t pos = 0; pos < s; pos++) {
      softmax_at(f, i * per + pos, classes, s, p);
      for (int64_t k = 0; k < classes; k++) {
        const int64_t v = k * s + pos;
        for (int64_t j = 0; j < classes; j++)
          cpk_tensor_set(out, (v * n + i) * per + j * s + pos,
                         sqrt(c * p[j]) * ((k == j) - sqrt(p[k] * p[j])));
      }
    }
  cpk__free(p);
  return CPK_OK;
}

static int64_t ce_compact_sqrt_columns(const cpk_tensor *f) {
  return (f->shape[1] - 1) * spatial(f);
}

/* c (diag(p) - p p^T) = c diag(q) (I - q q^T) diag(q) with q = sqrt(p),
 * |q| = 1, has rank C-1. The Householder reflection that takes q to -e_last
 * has columns j < C-1 that are an orthonormal basis Q of q's complement,
 * Q[i, j] = delta_ij - w_i q_j / (1 + q_last) with w = q + e_last (stable:
 * 1 + q_last >= 1), and Q Q^T = I - q q^T. So C-1 columns suffice:
 *   out[(j,s), n, i, s] = sqrt(c) q_i Q[i, j],   j < C-1,
 * a tenth less work than the contract's C columns for 10 classes. */
static int ce_compact_sqrt_hessian(cpk_context *ctx, double c,
                                   const cpk_tensor *f,
                                   const cpk_tensor *target, cpk_tensor *out) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  const int64_t per = classes * s, last = classes - 1;
  double *p = cpk__malloc((size_t)classes * sizeof *p);
  (void)ctx;
  (void)target;
  if (p == NULL)
    return CPK_ENOMEM;
  for (int64_t i = 0; i < n; i++)
    for (int64_t pos = 0; pos < s; pos++) {
      softmax_at(f, i * per + pos, classes, s, p);
      const double q_last = sqrt(p[last]), rc = sqrt(c);
      for (int64_t j = 0; j < last; j++) {
        const int64_t v = j * s + pos;
        const double qj = sqrt(p[j]);
        for (int64_t k = 0; k < classes; k++) {
          const double qk = sqrt(p[k]), wk = k == last ? q_last + 1 : qk;
          cpk_tensor_set(out, (v * n + i) * per + k * s + pos,
                         rc * qk * ((k == j) - wk * qj / (1 + q_last)));
        }
      }
    }
  cpk__free(p);
  return CPK_OK;
}

/* out[m, n] = sqrt(c / M) (p - onehot(y_m)) with y_m ~ Categorical(p) at
 * every position. */
static int ce_sqrt_hessian_mc(cpk_context *ctx, double c, const cpk_tensor *f,
                              int64_t m, cpk__rng *rng, cpk_tensor *out) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  const int64_t per = classes * s;
  const double scale = sqrt(c / (double)m);
  int64_t first, total;
  double *p = cpk__malloc((size_t)classes * sizeof *p);
  if (p == NULL)
    return CPK_ENOMEM;
  /* One uniform per (sample, position, draw), sample-major: a shard skips
   * those of the samples before it. */
  cpk__context_shard(ctx, n, &first, &total);
  cpk__rng_skip(rng, first * s * m);
  for (int64_t i = 0; i < n; i++)
    for (int64_t pos = 0; pos < s; pos++) {
      softmax_at(f, i * per + pos, classes, s, p);
      for (int64_t v = 0; v < m; v++) {
        double u = cpk__rng_uniform(rng), acc = 0.0;
        int64_t draw = classes - 1;
        for (int64_t k = 0; k < classes; k++)
          if (u < (acc += p[k])) {
            draw = k;
            break;
          }
        for (int64_t k = 0; k < classes; k++)
          cpk_tensor_set(out, (v * n + i) * per + k * s + pos,
                         scale * (p[k] - (k == draw)));
      }
    }
  cpk__free(p);
  return CPK_OK;
}

/* c (diag(p) - p p^T) u = c (p o u - p (p . u)) at every position. */
static int ce_hessian_mat(cpk_context *ctx, double c, const cpk_tensor *f,
                          const cpk_tensor *in, cpk_tensor *out) {
  const int64_t n = f->shape[0], classes = f->shape[1], s = spatial(f);
  const int64_t per = classes * s, v = cpk_tensor_numel(in) / (n * per);
  double *p = cpk__malloc((size_t)classes * sizeof *p);
  if (p == NULL)
    return CPK_ENOMEM;
  for (int64_t i = 0; i < n; i++)
    for (int64_t pos = 0; pos < s; pos++) {
      softmax_at(f, i * per + pos, classes, s, p);
      for (int64_t col = 0; col < v; col++) {
        const int64_t base = (col * n + i) * per + pos;
        double pu = 0.0;
        for (int64_t k = 0; k < classes; k++)
          pu += p[k] * cpk_tensor_get(in, base + k * s);
        for (int64_t k = 0; k < classes; k++)
          cpk_tensor_set(out, base + k * s,
                         c * p[k] * (cpk_tensor_get(in, base + k * s) - pu));
      }
    }
  cpk__free(p);
  return CPK_OK;
}

const cpk__loss_def cpk__cross_entropy_loss = {
    .kind = CPK_LOSS_CROSS_ENTROPY,
    .name = "cross_entropy",
    .check_target = ce_check_target,
    .mean_count = ce_mean_count,
    .value_grad = ce_value_grad,
    .sqrt_columns = ce_sqrt_columns,
    .sqrt_hessian = ce_sqrt_hessian,
    .compact_sqrt_columns = ce_compact_sqrt_columns,
    .compact_sqrt_hessian = ce_compact_sqrt_hessian,
    .sqrt_hessian_mc = ce_sqrt_hessian_mc,
    .hessian_mat = ce_hessian_mat,
};
