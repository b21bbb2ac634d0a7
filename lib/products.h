/*
 * products.h: what the two schedules of the Hessian-vector product share
 * (private): the operator (struct cpk_curvature_op, lib/products.c) and the
 * steps both are made of. products.c holds the operator, the other
 * curvatures and the R-operator (forward over reverse); products_dbl.c the
 * double backward (reverse over reverse).
 *
 * Notation (layer i maps a_i to a_{i+1} with parameters theta_i; J_i and
 * Jtheta_i its input and parameter Jacobians; delta_{i+1} = dL/da_{i+1},
 * the ordinary gradient at its output, op->grads[i + 1]; v the k tangents
 * of the parameters, tang):
 *   tangent sweep:  xdot_{i+1} = J_i xdot_i + Jtheta_i v_i  (xdot_stop = 0);
 *   second order:   the layer's terms in (delta_{i+1}, xdot_i, v_i),
 *                     abar_i += f''(a_i) o delta_{i+1} o xdot_i
 *                               + J_i(theta := v_i)^T delta_{i+1},
 *                     thetabar_i += Jtheta_i(a := xdot_i)^T delta_{i+1};
 *   adjoint sweep:  abar_L = H_loss xdot_L,
 *                   abar_i = J_i^T abar_{i+1} (+ the terms),
 *                   thetabar_i += Jtheta_i^T abar_{i+1}.
 */
#ifndef CPK_PRODUCTS_H
#define CPK_PRODUCTS_H

#include "engine.h"

typedef struct {
  cpk__layer *layer;
  int slot;
  int64_t numel, offset; /* in the flat parameter vector */
} cpk__trainable;

struct cpk_curvature_op {
  cpk__pass pass;
  cpk_pass_spec spec; /* the caller's, without extensions */
  cpk_curvature kind;
  cpk_hvp_method method; /* how a Hessian product is computed */
  int stop;              /* lowest layer with trainable parameters */
  cpk_tensor **grads;    /* Hessian: dL/dy at each layer output (index i+1) */
  cpk_tensor **d2g;      /* Hessian: f''(a_i) o delta_{i+1} [N, *in] of each
                            elementwise layer i > stop with f'' != 0
                            (index i), NULL elsewhere */
  cpk_tensor *root;      /* Fisher kinds: S [M, N, *out] or g [1, N, *out]
                            (on the host) */
  int device;            /* the context is on the CUDA device */
  cpk_tensor *f_host;    /* device operator: the model output on the host */
  cpk_tensor **pdev;     /* device operator: its parameter copies, slot
                            i * CPK__MAX_PARAMS + p, while not in place */
  int installed;         /* the copies are in place (params[p].dev) */
  int ntrain;
  cpk__trainable *train;
  int64_t dim;
  /* Passes over a data set (cpk_curvature_op_new_ex, max_batch): nothing
   * is kept; every product runs the passes over the borrowed batch again
   * (samples [first, first + nlocal) of total) and sums them. */
  int64_t max_batch, nlocal, first, total;
  const cpk_tensor *input, *target;
};

/* Tangent sweep through layer i: allocates xdot[i + 1] [k, N, *out] :=
 * J_i xdot[i] + sum_p Jtheta_p tang_p (xdot[i] NULL: zero). */
int cpk__curv_tangent_layer(cpk_curvature_op *op, int i, int64_t k,
                            cpk_tensor **xdot, cpk_tensor **tang);

/* w := M u at the model output (blocks [k, N, *out] on the context's
 * device, w zero on entry): the loss Hessian, or the Fisher kinds' root. */
int cpk__curv_output(cpk_curvature_op *op, const cpk_tensor *u, cpk_tensor *w);

/* The Hessian's second-order terms of layer i, with g = delta_{i+1}, in
 * two parts: those of the tangent xdot at the layer input (k columns;
 * NULL: zero, nothing to add),
 *   ain[v]     += f''(a_i) o g o xdot[v]     (op->d2g; ain NULL: not wanted;
 *                                            ain_zero: ain holds zeros and
 *                                            is written, not added to)
 *   prods_p[v] += Jtheta_p(a_i := xdot[v])^T g  (mixed_param_jac_t_mat),
 * and those of the direction v alone (known before any sweep),
 *   ain[v]     += sum_p J_i(theta_p := tang_p[v])^T g  (mixed_jac_t_mat). */
int cpk__curv_terms_tangent(cpk_curvature_op *op, int i, int64_t k,
                            const cpk_tensor *xdot, cpk_tensor *ain,
                            int ain_zero, cpk_tensor **prods);
int cpk__curv_terms_direction(cpk_curvature_op *op, int i, cpk_tensor **tang,
                              cpk_tensor *ain);

/* The double-backward Hessian product of k tangents into prods (zero on
 * entry), views [k, *S_t] per trainable parameter (products_dbl.c). */
int cpk__curv_hessian_dbl(cpk_curvature_op *op, int64_t k, cpk_tensor **tang,
                          cpk_tensor **prods);

#endif /* CPK_PRODUCTS_H */
