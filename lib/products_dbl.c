/*
 * products_dbl.c: the Hessian-vector product by double backward (reverse
 * over reverse), cpk_curvature_op's CPK_HVP_DOUBLE_BACKWARD; notation in
 * products.h.
 *
 * The backward pass computes the gradient as
 *   delta_L = dL/da_L,  delta_i = J_i(a_i, theta_i)^T delta_{i+1},
 *   g_i = Jtheta_i(a_i, theta_i)^T delta_{i+1},
 * and H v is the gradient of s(theta) = sum_i <v_i, g_i>. Reverse mode on
 * s runs the backward pass's operations in reverse, that is from the input
 * side up, and then the forward pass's in reverse:
 *
 *  1. Adjoint of the backward sweep, i = stop .. L-1 (deltabar_stop = 0:
 *     no adjoint flows into the lowest trainable layer's input gradient,
 *     which s does not use):
 *       deltabar_{i+1} = J_i deltabar_i + Jtheta_i v_i
 *     (the adjoints of delta_i = J_i^T delta_{i+1} and g_i = Jtheta_i^T
 *     delta_{i+1} with respect to delta_{i+1}); and the adjoints that the
 *     two operations give their other inputs, a_i and theta_i, from
 *     <deltabar_i, J_i^T delta_{i+1}> + <v_i, Jtheta_i^T delta_{i+1}>:
 *       abar_i^(2)  = f''(a_i) o delta_{i+1} o deltabar_i      (elementwise)
 *                   + J_i(theta_i := v_i)^T delta_{i+1}          (bilinear)
 *       thetabar_i += Jtheta_i(a_i := deltabar_i)^T delta_{i+1}  (bilinear)
 *     The terms in deltabar_i are computed here (cpk__curv_terms_tangent):
 *     the parameter one goes straight into the product, the f'' one is
 *     stored for step 3 (elementwise layers with f'' != 0 only). The term
 *     in v_i alone needs nothing of this sweep and is added in step 3
 *     (cpk__curv_terms_direction), straight into abar_i, instead of being
 *     stored. deltabar_i is dropped once layer i is done, so at most two
 *     tangent blocks live at a time.
 *  2. delta_L = dL/da_L depends on a_L: abar_L = H_loss deltabar_L.
 *  3. Reverse over the forward graph, i = L-1 .. stop:
 *       thetabar_i += Jtheta_i^T abar_{i+1},
 *       abar_i = J_i^T abar_{i+1} + abar_i^(2).
 *     H v = thetabar.
 *
 * deltabar is the R-operator's xdot and abar its gdot: the two schedules
 * do the same products of blocks of k columns (GEMMs), in another order.
 * What differs is what is kept: the R-operator keeps xdot at every layer
 * through its forward sweep for the second-order terms of its backward
 * sweep; this one keeps f''(a_i) o delta_{i+1} o deltabar_i of the
 * elementwise layers with f'' != 0 and nothing else (nothing at all for
 * ReLU networks). Everything goes through the layers' primitives and
 * ops.h, so a CUDA context runs it on the device.
 */
#include "ops.h"
#include "products.h"

int cpk__curv_hessian_dbl(cpk_curvature_op *op, int64_t k, cpk_tensor **tang,
                          cpk_tensor **prods) {
  cpk__pass *pass = &op->pass;
  cpk_context *ctx = pass->ctx;
  const cpk_model *m = pass->model;
  const int nl = m->nlayers;
  cpk_tensor **bar = cpk__calloc((size_t)(nl + 1) * sizeof *bar);
  cpk_tensor **second = cpk__calloc((size_t)nl * sizeof *second);
  cpk_tensor *abar = NULL;
  int rc = bar != NULL && second != NULL ? CPK_OK : CPK_ENOMEM;

  /* 1. the adjoint of the backward sweep, from the input side up */
  for (int i = op->stop; rc == CPK_OK && i < nl; i++) {
    cpk__layer *l = m->layers[i];
    rc = cpk__curv_tangent_layer(op, i, k, bar, tang);
    if (rc == CPK_OK && i > op->stop && op->d2g[i] != NULL)
      rc = cpk__block_new_on(ctx, &second[i], m->dtype, k, pass->n, l->in_ndim,
                             l->in_shape);
    if (rc == CPK_OK && i > op->stop)
      rc = cpk__curv_terms_tangent(op, i, k, bar[i], second[i], 1, prods);
    cpk_tensor_free(bar[i]);
    bar[i] = NULL;
  }

  /* 2. the loss: abar_L = H_loss deltabar_L */
  const cpk__layer *last = m->layers[nl - 1];
  if (rc == CPK_OK &&
      (rc = cpk__block_new_on(ctx, &abar, m->dtype, k, pass->n, last->out_ndim,
                              last->out_shape)) == CPK_OK)
    rc = cpk__curv_output(op, bar[nl], abar);
  if (bar != NULL) {
    cpk_tensor_free(bar[nl]);
    bar[nl] = NULL;
  }

  /* 3. reverse over the forward graph, adding the second-order adjoints */
  for (int i = nl - 1; rc == CPK_OK && i >= op->stop; i--) {
    cpk__layer *l = m->layers[i];
    for (int t = 0; rc == CPK_OK && t < op->ntrain; t++)
      if (op->train[t].layer == l) /* onto step 1's parameter adjoints */
        rc = l->kind->param_jac_t_mat(l, ctx, op->train[t].slot, pass->acts[i],
                                      abar, 0, 1.0, prods[t]);
    cpk_tensor *ain = NULL;
    if (rc == CPK_OK && i > op->stop &&
        (rc = cpk__block_new_on(ctx, &ain, m->dtype, k, pass->n, l->in_ndim,
                                l->in_shape)) == CPK_OK)
      rc = l->kind->jac_t_mat(l, ctx, pass->acts[i], pass->acts[i + 1], abar,
                              ain);
    if (rc == CPK_OK && ain != NULL)
      rc = cpk__curv_terms_direction(op, i, tang, ain);
    if (rc == CPK_OK && ain != NULL && second[i] != NULL)
      cpk__axpy(ctx, m->dtype, cpk_tensor_numel(ain), 1.0, second[i]->data,
                ain->data);
    cpk_tensor_free(second[i]);
    second[i] = NULL;
    cpk_tensor_free(abar);
    abar = ain;
  }

  cpk_tensor_free(abar);
  for (int i = 0; bar != NULL && i <= nl; i++)
    cpk_tensor_free(bar[i]);
  for (int i = 0; second != NULL && i < nl; i++)
    cpk_tensor_free(second[i]);
  cpk__free(bar);
  cpk__free(second);
  return rc;
}
