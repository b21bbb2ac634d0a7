/*
 * kfac.c: Kronecker factors of the GGN from the backpropagated square root
 * (BackPACK's KFAC with the Monte Carlo root, KFLR with the exact one).
 * Linear on [N, IN], weight [OUT, IN]: P.kfac.0 = G = sum_{v,n} s s^T
 * (OUT x OUT, carries the loss scale c), P.kfac.1 = A = (1/N) X^T X
 * (IN x IN); the GGN block is approximated by G (x) A in the row-major order
 * of the flattened weight. Bias: P.kfac.0 = G alone.
 */
#include <stdio.h>

#include "extension.h"
#include "ops.h"

static int kron_factors(cpk__param_site *s, const cpk_tensor *S,
                        const char *prefix) {
  char name[32];
  int rc;
  if (!cpk__site_is_dense_linear(s))
    return cpk__fail(CPK_ENOTSUP,
                     "%s: %s factors are not supported for this layer yet",
                     s->layer->where, prefix);
  const int64_t v = S->shape[0], fo = s->g->shape[2], fi = s->x->shape[1];
  int64_t gshape[2] = {fo, fo}, ashape[2] = {fi, fi};
  cpk_tensor *g, *a;
  /* G = S_flat^T S_flat with S_flat [V*N, OUT]. */
  snprintf(name, sizeof name, "%s.0", prefix);
  if ((rc = cpk__site_result(s, name, 2, gshape, &g)) != CPK_OK)
    return rc;
  cpk__gemm(s->ctx, S->dtype, 1, 0, fo, fo, v * s->n, 1.0, S->data, fo,
            S->data, fo, 0.0, g->data, fo);
  if (s->p == 1) /* bias */
    return CPK_OK;
  snprintf(name, sizeof name, "%s.1", prefix);
  if ((rc = cpk__site_result(s, name, 2, ashape, &a)) != CPK_OK)
    return rc;
  cpk__gemm(s->ctx, S->dtype, 1, 0, fi, fi, s->n, 1.0 / (double)s->n,
            s->x->data, fi, s->x->data, fi, 0.0, a->data, fi);
  return CPK_OK;
}

static int kfac(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_mc, "kfac");
}
static int kflr(cpk__param_site *s) {
  return kron_factors(s, s->sqrt_exact, "kflr");
}

const cpk__extension cpk__kfac_ext = {"kfac", CPK__NEED_SQRT_MC, kfac};
const cpk__extension cpk__kflr_ext = {"kflr", CPK__NEED_SQRT_EXACT, kflr};
