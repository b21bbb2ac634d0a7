/*
 * kfac.c: Kronecker factors of the GGN from the backpropagated square root
 * (BackPACK's KFAC with the Monte Carlo root, KFLR with the exact one).
 * Linear on [N, IN], weight [OUT, IN]: P.kfac.0 = G = sum_{v,n} s s^T
 * (OUT x OUT, carries the loss scale c), P.kfac.1 = A = (1/N) X^T X
 * (IN x IN); the GGN block is approximated by G (x) A in the row-major order
 * of the flattened weight. Bias: P.kfac.0 = G alone.
 * KFRA (P.kfra.0, P.kfra.1) takes G = Gbar, the averaged GGN propagated
 * backward as one matrix (cpk__kfra_start / cpk__kfra_through), and the
 * same A.
 */
#include <stdio.h>

#include "extension.h"
#include "ops.h"

/* The output factor: G = S_flat^T S_flat with S_flat [V*N, OUT] from a
 * square root, or KFRA's Gbar (copied) when S is NULL. */
static int output_factor(cpk__param_site *s, const cpk_tensor *S,
                         const char *prefix) {
  const int64_t fo = s->g->shape[2];
  int64_t gshape[2] = {fo, fo};
  char name[32];
  cpk_tensor *g;
  snprintf(name, sizeof name, "%s.0", prefix);
  int rc = cpk__site_result(s, name, 2, gshape, &g);
  if (rc != CPK_OK)
    return rc;
  if (S == NULL)
    cpk__copy(s->ctx, g->dtype, fo * fo, s->kfra->data, g->data);
  else
    cpk__gemm(s->ctx, S->dtype, 1, 0, fo, fo, S->shape[0] * s->n, 1.0,
              S->data, fo, S->data, fo, 0.0, g->data, fo);
  return CPK_OK;
}

static int kron_factors(cpk__param_site *s, const cpk_tensor *S,
                        const char *prefix) {
  char name[32];
  int rc;
  if (!cpk__site_is_dense_linear(s))
    return cpk__fail(CPK_ENOTSUP,
                     "%s: %s factors are not supported for this layer yet",
                     s->layer->where, prefix);
  const int64_t fi = s->x->shape[1];
  int64_t ashape[2] = {fi, fi};
  cpk_tensor *a;
  if ((rc = output_factor(s, S, prefix)) != CPK_OK || s->p == 1) /* bias */
    return rc;
  snprintf(name, sizeof name, "%s.1", prefix);
  if ((rc = cpk__site_result(s, name, 2, ashape, &a)) != CPK_OK)
    return rc;
  cpk__gemm(s->ctx, s->x->dtype, 1, 0, fi, fi, s->n, 1.0 / (double)s->n,
            s->x->data, fi, s->x->data, fi, 0.0, a->data, fi);
  return CPK_OK;
}

static int kfac(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_mc, "kfac");
}
static int kflr(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_exact, "kflr");
}
static int kfra(cpk__param_site *s) { return kron_factors(s, NULL, "kfra"); }

int cpk__kfra_start(cpk_context *ctx, const cpk_tensor *sqrt_exact,
                    cpk_tensor **gbar) {
  const int64_t v = sqrt_exact->shape[0], n = sqrt_exact->shape[1];
  const int64_t d = cpk_tensor_numel(sqrt_exact) / (v * n);
  int64_t shape[2] = {d, d};
  int rc = cpk_tensor_new(gbar, sqrt_exact->dtype, 2, shape);
  if (rc == CPK_OK)
    cpk__gemm(ctx, sqrt_exact->dtype, 1, 0, d, d, v * n, 1.0,
              sqrt_exact->data, d, sqrt_exact->data, d, 0.0, (*gbar)->data, d);
  return rc;
}

int cpk__kfra_through(cpk_tensor **gbar, cpk__layer *l, cpk_context *ctx,
                      const cpk_tensor *x, const cpk_tensor *y) {
  const int64_t d = cpk__layer_in_numel(l);
  int64_t shape[2] = {d, d};
  cpk_tensor *out;
  int rc = cpk_tensor_new(&out, (*gbar)->dtype, 2, shape);
  if (rc == CPK_OK)
    rc = l->kind->ea_jac_t_mat_jac
             ? l->kind->ea_jac_t_mat_jac(l, ctx, x, y, *gbar, out)
             : cpk__ea_jac_t_mat_jac_generic(l, ctx, x, y, *gbar, out);
  if (rc != CPK_OK) {
    cpk_tensor_free(out);
    return rc;
  }
  cpk_tensor_free(*gbar);
  *gbar = out;
  return CPK_OK;
}

const cpk__extension cpk__kfac_ext = {"kfac", CPK__NEED_SQRT_MC, kfac};
const cpk__extension cpk__kflr_ext = {"kflr", CPK__NEED_SQRT_EXACT, kflr};
const cpk__extension cpk__kfra_ext = {"kfra", CPK__NEED_KFRA, kfra};
