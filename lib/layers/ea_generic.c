/*
 * ea_generic.c: KFRA's expectation-averaged Jacobian product for any layer,
 *   A = (1/N) sum_n J_n^T m J_n,   m [D_out, D_out] symmetric, A [D_in, D_in],
 * from the layer's jac_t_mat applied twice to dense blocks:
 *   T[v, n, :] = J_n^T m[v, :]           (block [D_out, N, D_in])
 *   U[j, n, v] = T[v, n, j]              (rows of J_n^T m, [D_in, N, D_out])
 *   A[j, :]    = (1/N) sum_n J_n^T U[j, n, :].
 * Memory N * D_out * D_in: layers with closed forms provide their own.
 */
#include <string.h>

#include "device.h"
#include "layer.h"
#include "ops.h"
#include "ops_hessian.h"

/* Without a memory budget, dense blocks that would take more than a
 * quarter of the machine's memory are refused with the size in the
 * message, rather than risking the process; under a budget the tracked
 * allocations fail against it instead (CPK_ENOMEM). */
static size_t unbudgeted_max_bytes(void) {
  const size_t machine = cpk__machine_memory();
  return machine > 0 ? machine / 4 : (size_t)1 << 30;
}

int cpk__ea_jac_t_mat_jac_generic(cpk__layer *l, cpk_context *ctx,
                                  const cpk_tensor *x, const cpk_tensor *y,
                                  const cpk_tensor *m, cpk_tensor *out) {
  const int64_t n = x->shape[0];
  const int64_t di = cpk__layer_in_numel(l), dout = cpk__layer_out_numel(l);
  /* The blocks live in two stages, b and t, then t, u and a: at most
   * N * max(D_out (D_out + D_in), D_in (2 D_out + D_in)) elements. */
  const int64_t first = dout + di, second = 2 * dout + di;
  size_t bytes, b1, b2;
  int rc = cpk__mul_size((size_t)(n * dout), (size_t)first, &b1, l->where);
  if (rc == CPK_OK)
    rc = cpk__mul_size((size_t)(n * di), (size_t)second, &b2, l->where);
  if (rc == CPK_OK)
    rc = cpk__mul_size(b1 > b2 ? b1 : b2, cpk_dtype_size(m->dtype), &bytes,
                       l->where);
  if (rc != CPK_OK)
    return rc;
  if (cpk_memory_limit() == 0 && bytes > unbudgeted_max_bytes())
    return cpk__fail(CPK_ENOTSUP,
                     "%s: kfra needs %zu bytes for this layer's dense Jacobian "
                     "products, more than a quarter of this machine's memory "
                     "(%zu); set a memory budget (--max-memory) to allow more",
                     l->where, bytes, unbudgeted_max_bytes());
  int64_t s1[3] = {dout, n, dout}, s2[3] = {dout, n, di}, s3[3] = {di, n, dout};
  int64_t s4[3] = {di, n, di};
  cpk_tensor *b = NULL, *t = NULL, *u = NULL, *a = NULL;
  const cpk_dtype dt = m->dtype;
  if ((rc = cpk__tensor_new_on(ctx, &b, dt, 3, s1)) != CPK_OK ||
      (rc = cpk__tensor_new_on(ctx, &t, dt, 3, s2)) != CPK_OK)
    goto done;
  cpk__repeat_middle(ctx, dt, dout, n, dout, m->data, b->data);
  if ((rc = l->kind->jac_t_mat(l, ctx, x, y, b, t)) != CPK_OK)
    goto done;
  cpk_tensor_free(b);
  b = NULL;
  if ((rc = cpk__tensor_new_on(ctx, &u, dt, 3, s3)) != CPK_OK)
    goto done;
  cpk__swap_outer_axes(ctx, dt, dout, n, di, t->data, u->data);
  if ((rc = cpk__tensor_new_on(ctx, &a, dt, 3, s4)) != CPK_OK ||
      (rc = l->kind->jac_t_mat(l, ctx, x, y, u, a)) != CPK_OK)
    goto done;
  cpk__sum_rows(ctx, dt, di, n, di, a->data, 0.0, out->data);
  cpk__scale(ctx, dt, di * di, 1.0 / (double)n, out->data);
done:
  if (rc == CPK_ENOMEM) /* name the layer in the budget's message */
    rc = cpk__fail_prefix(rc, "%s: kfra's dense Jacobian products", l->where);
  cpk_tensor_free(b);
  cpk_tensor_free(t);
  cpk_tensor_free(u);
  cpk_tensor_free(a);
  return rc;
}
