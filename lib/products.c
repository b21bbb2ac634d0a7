/*
 * products.c: curvature-vector products C v for a block of k parameter
 * vectors at once (cpk_curvature_op).
 *
 * All four curvatures share one shape, sum_n J_n^T M_n J_n (+ the Hessian's
 * second-order terms), computed as
 *   1. R-forward: tangents xdot_{i+1} = J_x xdot_i + J_theta t_i through
 *      every layer (jac_mat, param_jac_mat), giving u = J v at the output;
 *   2. at the output w = M u per sample: the loss Hessian (Hessian, GGN), the
 *      sampled root S S^T (Monte Carlo Fisher), or g g^T with the per-sample
 *      output gradient (empirical Fisher);
 *   3. R-backward: gdot_i = J_x^T gdot_{i+1}, products J_theta^T gdot.
 * For the Hessian, the layers' second-order terms, with g the ordinary
 * gradient at the layer output (kept from one backward pass at creation):
 *   elementwise f:  f''(x) o g o xdot                      (to gdot_in;
 *                   f''(x) o g kept per layer at creation, op->d2g)
 *   bilinear (linear, conv, batch norm's weight in evaluation mode; the
 *   layers' mixed_jac_t_mat and mixed_param_jac_t_mat, on whole blocks):
 *     J_x(theta := t)^T g (to gdot_in),  J_theta(x := xdot)^T g (to products).
 * Two schedules compute the Hessian product from the same terms
 * (cpk_curvature_op_set_method; notation in products.h):
 *  - R-operator (Pearlmutter, forward over reverse; here): step 3 adds the
 *    terms as it passes each layer, so step 1 keeps xdot at every layer;
 *  - double backward (reverse over reverse; products_dbl.c): the backward
 *    pass differentiated in reverse mode. Its first sweep (the adjoint of
 *    the backward pass, from the input up) is step 1's and takes the terms
 *    in xdot right away, dropping each xdot as it goes (only the f'' terms
 *    are kept for its reverse sweep, steps 2 and 3, which adds the terms in
 *    v alone as it passes).
 * The default is the faster as measured (CPK__HVP_DEFAULT, BENCHMARKS.md).
 *
 * On a CUDA context the activations, the blocks of steps 1 and 3 and the
 * layers' cached state live on the device for the operator's lifetime;
 * step 2 (N x C numbers per column) runs on the host with ctx->host, like
 * engine.c's loss steps: u comes down, w goes up. The operator keeps its
 * own device copies of the parameters (taken at creation from the model's
 * resident copies, so it fixes the parameters as the CPU operator does) and
 * puts them in place only while it computes, so a cpk_compute on the same
 * model, which puts the model's resident copies in place for its pass, does
 * not pull them away. The layers' cached forward state
 * (maxpool's argmax) is shared with any other pass on the same model,
 * though, on either device: run other passes on a model only before
 * creating its operator or after freeing it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "device_pass.h"
#include "engine.h"
#include "ops.h"
#include "products.h"

/* The method of cpk_curvature_op's Hessian products unless the caller
 * chooses: double backward, the faster of the two as measured (BENCHMARKS.md,
 * "R-operator against double backward": 3% faster per product on
 * mnist_mlp, the same on cifar10_3c3d) and the one that holds less memory
 * (it drops each tangent once its layer is done). */
#define CPK__HVP_DEFAULT CPK_HVP_DOUBLE_BACKWARD

int cpk_curvature_parse(const char *name, cpk_curvature *out) {
  static const char *const names[] = {"hessian", "ggn", "fisher_mc",
                                      "empirical_fisher"};
  for (int i = 0; i < 4; i++)
    if (strcmp(name, names[i]) == 0) {
      *out = (cpk_curvature)i;
      return CPK_OK;
    }
  return cpk__fail(CPK_EUSAGE,
                   "unknown curvature '%s' (expected hessian, ggn, fisher_mc "
                   "or empirical_fisher)",
                   name);
}

int64_t cpk_curvature_op_dim(const cpk_curvature_op *op) { return op->dim; }

int cpk_curvature_op_set_method(cpk_curvature_op *op, cpk_hvp_method method) {
  if (method != CPK_HVP_ROP && method != CPK_HVP_DOUBLE_BACKWARD)
    return cpk__fail(CPK_EINVAL,
                     "unknown Hessian-vector product method %d (expected "
                     "CPK_HVP_ROP or CPK_HVP_DOUBLE_BACKWARD)",
                     (int)method);
  op->method = method;
  return CPK_OK;
}

cpk_hvp_method cpk_curvature_op_method(const cpk_curvature_op *op) {
  return op->method;
}

/* Put the operator's device copies of the parameters in place
 * (params[p].dev), keeping what was there, or the other way round. */
static void swap_params(cpk_curvature_op *op) {
  cpk_model *m = op->pass.model;
  if (op->pdev == NULL)
    return;
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++) {
      cpk_tensor **slot = &op->pdev[i * CPK__MAX_PARAMS + p];
      cpk_tensor *keep = m->layers[i]->params[p].dev;
      m->layers[i]->params[p].dev = *slot;
      *slot = keep;
    }
  op->installed = !op->installed;
}

void cpk_curvature_op_free(cpk_curvature_op *op) {
  if (op == NULL)
    return;
  cpk_model *m = op->pass.model;
  if (op->grads != NULL)
    for (int i = 0; i <= m->nlayers; i++)
      cpk_tensor_free(op->grads[i]);
  cpk__free(op->grads);
  if (op->d2g != NULL)
    for (int i = 0; i < m->nlayers; i++)
      cpk_tensor_free(op->d2g[i]);
  cpk__free(op->d2g);
  cpk_tensor_free(op->root);
  cpk_tensor_free(op->f_host);
  cpk__free(op->train);
  cpk__pass_release(&op->pass);
  if (op->pdev != NULL) {
    if (op->installed)
      swap_params(op);
    for (int i = 0; i < m->nlayers * CPK__MAX_PARAMS; i++)
      cpk_tensor_free(op->pdev[i]);
    cpk__free(op->pdev);
    /* device state cached by the layers must not outlive the operator */
    for (int i = 0; i < m->nlayers; i++)
      if (m->layers[i]->kind->drop_cache != NULL)
        m->layers[i]->kind->drop_cache(m->layers[i]);
  }
  cpk__free(op);
}

/* A loss step on the host (value_grad, or the Monte Carlo root) for a
 * block `out` on the operator's device: computed with ctx->host from the
 * output's host copy, then uploaded. On the CPU, in place. */
enum loss_step { STEP_GRAD, STEP_SQRT_MC };

static int host_loss_step(cpk_curvature_op *op, enum loss_step step,
                          const cpk_tensor *target, cpk_tensor *out) {
  cpk__pass *pass = &op->pass;
  cpk_context *ctx = op->device ? cpk__context_host(pass->ctx) : pass->ctx;
  const cpk_tensor *f =
      op->device ? op->f_host : pass->acts[pass->model->nlayers];
  cpk_tensor *o = out;
  double value;
  int rc = CPK_OK;
  if (out->device != NULL)
    rc = cpk_tensor_new(&o, out->dtype, out->ndim, out->shape);
  if (rc == CPK_OK && step == STEP_GRAD)
    rc = pass->loss->value_grad(ctx, pass->scale, f, target, &value, o);
  else if (rc == CPK_OK) {
    cpk__rng rng;
    cpk__rng_seed(&rng, pass->ctx->seed);
    rc = pass->loss->sqrt_hessian_mc(ctx, pass->scale, f, o->shape[0], &rng,
                                     o);
  }
  if (o != out) {
    if (rc == CPK_OK)
      rc = cpk__tensor_fill_from_host(pass->ctx, out, o);
    cpk_tensor_free(o);
  }
  return rc;
}

static int list_trainable(cpk_curvature_op *op) {
  const cpk_model *m = op->pass.model;
  int count = 0;
  op->stop = m->nlayers;
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++)
      if (m->layers[i]->params[p].trainable) {
        count++;
        if (op->stop == m->nlayers)
          op->stop = i;
      }
  if (count == 0)
    return cpk__fail(CPK_EINVAL, "%s: the model has no trainable parameters",
                     m->source);
  op->train = cpk__calloc((size_t)count * sizeof *op->train);
  if (op->train == NULL)
    return CPK_ENOMEM;
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++) {
      cpk__param *q = &m->layers[i]->params[p];
      if (!q->trainable)
        continue;
      cpk__trainable *t = &op->train[op->ntrain++];
      t->layer = m->layers[i];
      t->slot = p;
      t->numel = cpk_tensor_numel(q->value);
      t->offset = op->dim;
      op->dim += t->numel;
    }
  return CPK_OK;
}

/* f''(a_i) o delta_{i+1} [N, *in] of an elementwise layer i with f'' != 0
 * (the same for every product, so kept). */
static int keep_d2g(cpk_curvature_op *op, int i) {
  cpk__pass *pass = &op->pass;
  cpk__layer *l = pass->model->layers[i];
  const cpk_tensor *x = pass->acts[i];
  int rc = cpk__tensor_new_on(pass->ctx, &op->d2g[i], x->dtype, x->ndim,
                              x->shape);
  if (rc == CPK_OK)
    rc = l->kind->d2(l, pass->ctx, x, pass->acts[i + 1], op->d2g[i]);
  if (rc == CPK_OK)
    cpk__mul_broadcast(pass->ctx, x->dtype, 1, cpk_tensor_numel(x),
                       op->grads[i + 1]->data, op->d2g[i]->data,
                       op->d2g[i]->data);
  return rc;
}

/* The Hessian needs dL/dy at every layer output from one backward pass
 * (and, from it, f''(a_i) o dL/da_{i+1} at the elementwise layers). */
static int keep_gradients(cpk_curvature_op *op, const cpk_tensor *target) {
  cpk__pass *pass = &op->pass;
  const cpk_model *m = pass->model;
  const cpk_tensor *f = pass->acts[m->nlayers];
  op->grads = cpk__calloc((size_t)(m->nlayers + 1) * sizeof *op->grads);
  op->d2g = cpk__calloc((size_t)m->nlayers * sizeof *op->d2g);
  if (op->grads == NULL || op->d2g == NULL)
    return CPK_ENOMEM;
  const cpk__layer *last = m->layers[m->nlayers - 1];
  int rc = cpk__block_new_on(pass->ctx, &op->grads[m->nlayers], f->dtype, 1,
                             pass->n, last->out_ndim, last->out_shape);
  if (rc == CPK_OK)
    rc = host_loss_step(op, STEP_GRAD, target, op->grads[m->nlayers]);
  for (int i = m->nlayers - 1; rc == CPK_OK && i > op->stop; i--) {
    cpk__layer *l = m->layers[i];
    if (l->kind->d2 != NULL)
      rc = keep_d2g(op, i);
    if (rc == CPK_OK &&
        (rc = cpk__block_new_on(pass->ctx, &op->grads[i], f->dtype, 1,
                                pass->n, l->in_ndim, l->in_shape)) == CPK_OK)
      rc = l->kind->jac_t_mat(l, pass->ctx, pass->acts[i], pass->acts[i + 1],
                              op->grads[i + 1], op->grads[i]);
  }
  return rc;
}

/* The Fisher kinds' square root at the output: sampled (S [M, N, *out]) or
 * the per-sample output gradient (g [1, N, *out]). */
static int fisher_root(cpk_curvature_op *op, const cpk_tensor *target) {
  cpk__pass *pass = &op->pass;
  const cpk_tensor *f = pass->acts[pass->model->nlayers];
  const cpk__layer *last = pass->model->layers[pass->model->nlayers - 1];
  const int64_t cols = op->kind == CPK_CURV_FISHER_MC ? pass->ctx->mc_samples : 1;
  /* kept on the host, where the output's curvature is applied */
  int rc = cpk__block_new(&op->root, f->dtype, cols, pass->n, last->out_ndim,
                          last->out_shape);
  if (rc != CPK_OK)
    return rc;
  return host_loss_step(op, op->kind == CPK_CURV_EMPIRICAL_FISHER
                                ? STEP_GRAD
                                : STEP_SQRT_MC,
                        target, op->root);
}

/* Run the pass that products need on samples [first, first + n) of a
 * batch of `total` (the loss scale and Monte Carlo draws follow them). On
 * a CUDA context the operator takes its own device copies of the
 * parameters here. */
static int op_prepare(cpk_curvature_op *op, cpk_context *ctx, cpk_model *model,
                      const cpk_pass_spec *plain, const cpk_tensor *input,
                      const cpk_tensor *target, cpk_curvature kind,
                      int64_t first, int64_t total) {
  int rc;
  cpk__context_apply_threads(ctx);
  op->kind = kind;
  op->method = CPK__HVP_DEFAULT;
  op->pass.ctx = ctx;
  op->pass.model = model;
  op->spec = *plain;
  op->pass.spec = &op->spec;
  op->pass.loss = cpk__loss_get(plain->loss);
  op->device = cpk__on_cuda(ctx);
  ctx->shard_first = first;
  ctx->shard_total = total;
  CPK__TRY(rc, list_trainable(op), done);
  if (op->device) { /* the operator's own parameter copies, in place */
    op->pdev = cpk__calloc((size_t)model->nlayers * CPK__MAX_PARAMS *
                           sizeof *op->pdev);
    if (op->pdev == NULL) {
      rc = CPK_ENOMEM;
      goto done;
    }
    CPK__TRY(rc, cpk__model_copy_params(ctx, model, op->pdev), done);
    swap_params(op);
  }
  CPK__TRY(rc, cpk__forward(&op->pass, input), done);
  op->pass.scale = cpk__loss_scale_total(op->pass.loss, plain->reduction,
                                         op->pass.acts[model->nlayers],
                                         op->pass.n_total);
  if (op->device && (rc = cpk__device_sync(ctx)) == CPK_OK)
    rc = cpk_tensor_copy_to_host(op->pass.acts[model->nlayers], &op->f_host);
  if (rc != CPK_OK)
    goto done;
  if (kind == CPK_CURV_HESSIAN)
    rc = keep_gradients(op, target);
  else if (kind != CPK_CURV_GGN)
    rc = fisher_root(op, target);
  if (rc == CPK_OK)
    rc = cpk__device_sync(ctx);
  if (rc == CPK_OK && op->device)
    swap_params(op); /* the copies into the operator, until apply */
done:
  ctx->shard_first = ctx->shard_total = 0;
  return rc;
}

int cpk_curvature_op_new(cpk_curvature_op **out, cpk_context *ctx,
                         cpk_model *model, const cpk_pass_spec *spec,
                         const cpk_tensor *input, const cpk_tensor *target,
                         cpk_curvature kind) {
  return cpk_curvature_op_new_ex(out, ctx, model, spec, input, target, kind,
                                 0);
}

int cpk_curvature_op_new_ex(cpk_curvature_op **out, cpk_context *ctx,
                            cpk_model *model, const cpk_pass_spec *spec,
                            const cpk_tensor *input, const cpk_tensor *target,
                            cpk_curvature kind, int64_t max_batch) {
  cpk_pass_spec plain = *spec;
  plain.extensions = NULL;
  *out = NULL;
  int64_t first = 0, total = 0, n = 0;
  int rc = CPK_OK;
  cpk__dist_begin(ctx);
  if (kind < CPK_CURV_HESSIAN || kind > CPK_CURV_EMPIRICAL_FISHER)
    rc = cpk__fail(CPK_EINVAL, "unknown curvature kind %d", (int)kind);
  if (rc == CPK_OK && max_batch < 0)
    rc = cpk__fail(CPK_EINVAL, "max_batch must be positive, got %lld",
                   (long long)max_batch);
  if (rc == CPK_OK)
    rc = cpk_check_pass(model, &plain, input, target);
  if (rc == CPK_OK)
    rc = cpk__device_covers(ctx, model, 0, NULL);
  if (rc == CPK_OK)
    n = input->shape[0];
  /* With MPI ranks, this rank's batch is a shard of the whole: products
   * are summed over the ranks (cpk_curvature_op_apply). */
  rc = cpk__dist_sizes(ctx, rc, n, &first, &total);
  if (rc != CPK_OK)
    return rc;
  cpk_curvature_op *op = cpk__calloc(sizeof *op);
  if (op == NULL)
    return cpk__dist_agree(ctx, CPK_ENOMEM);
  if (max_batch > 0 && max_batch < n) { /* passes at every product */
    op->kind = kind;
    op->method = CPK__HVP_DEFAULT;
    op->pass.ctx = ctx;
    op->pass.model = model;
    op->spec = plain;
    op->pass.spec = &op->spec;
    op->max_batch = max_batch;
    op->nlocal = n;
    op->first = first;
    op->total = total;
    op->input = input;
    op->target = target;
    rc = list_trainable(op);
  } else {
    rc = op_prepare(op, ctx, model, &plain, input, target, kind,
                    ctx->dist.size > 1 ? first : 0,
                    ctx->dist.size > 1 ? total : 0);
  }
  if ((rc = cpk__dist_agree(ctx, rc)) != CPK_OK) {
    cpk_curvature_op_free(op);
    return rc;
  }
  *out = op;
  return CPK_OK;
}

/* ------------------------------------------------------------- one product */

/* w := M u at the model output, per the curvature kind, on the host (ctx
 * a CPU context, f the output, u and w host tensors; w zero on entry). */
static int output_curvature_host(cpk_curvature_op *op, cpk_context *ctx,
                                 const cpk_tensor *f, const cpk_tensor *u,
                                 cpk_tensor *w) {
  cpk__pass *pass = &op->pass;
  if (op->root == NULL)
    return pass->loss->hessian_mat(ctx, pass->scale, f, u, w);
  /* w[v, n] = sum_m S[m, n] (S[m, n] . u[v, n]) */
  const int64_t k = u->shape[0], n = pass->n, m = op->root->shape[0];
  const int64_t d = cpk_tensor_numel(f) / n;
  for (int64_t v = 0; v < k; v++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t c = 0; c < m; c++) {
        double dot = 0.0;
        for (int64_t i = 0; i < d; i++)
          dot += cpk_tensor_get(op->root, (c * n + j) * d + i) *
                 cpk_tensor_get(u, (v * n + j) * d + i);
        for (int64_t i = 0; i < d; i++) {
          const int64_t at = (v * n + j) * d + i;
          cpk_tensor_set(w, at,
                         cpk_tensor_get(w, at) +
                             dot * cpk_tensor_get(op->root, (c * n + j) * d + i));
        }
      }
  return CPK_OK;
}

int cpk__curv_output(cpk_curvature_op *op, const cpk_tensor *u,
                     cpk_tensor *w) {
  cpk__pass *pass = &op->pass;
  if (!op->device) /* on a device operator u comes down and w goes up */
    return output_curvature_host(op, pass->ctx,
                                 pass->acts[pass->model->nlayers], u, w);
  cpk_tensor *uh = NULL, *wh = NULL;
  int rc = cpk__device_sync(pass->ctx);
  if (rc == CPK_OK)
    rc = cpk_tensor_copy_to_host(u, &uh);
  if (rc == CPK_OK)
    rc = cpk_tensor_new(&wh, w->dtype, w->ndim, w->shape);
  if (rc == CPK_OK)
    rc = output_curvature_host(op, cpk__context_host(pass->ctx), op->f_host,
                               uh, wh);
  if (rc == CPK_OK)
    rc = cpk__tensor_fill_from_host(pass->ctx, w, wh);
  cpk_tensor_free(uh);
  cpk_tensor_free(wh);
  return rc;
}

int cpk__curv_tangent_layer(cpk_curvature_op *op, int i, int64_t k,
                            cpk_tensor **xdot, cpk_tensor **tang) {
  cpk__pass *pass = &op->pass;
  cpk__layer *l = pass->model->layers[i];
  const cpk_tensor *x = pass->acts[i], *y = pass->acts[i + 1];
  int rc = cpk__block_new_on(pass->ctx, &xdot[i + 1], y->dtype, k, pass->n,
                             l->out_ndim, l->out_shape);
  if (rc == CPK_OK && xdot[i] != NULL)
    rc = l->kind->jac_mat(l, pass->ctx, x, y, xdot[i], xdot[i + 1]);
  for (int t = 0; rc == CPK_OK && t < op->ntrain; t++) {
    if (op->train[t].layer != l)
      continue;
    if (l->kind->param_jac_mat == NULL)
      return cpk__fail(CPK_ENOTSUP,
                       "%s: curvature products through this layer's "
                       "parameters are not supported yet",
                       l->where);
    rc = l->kind->param_jac_mat(l, pass->ctx, op->train[t].slot, x, tang[t],
                                1.0, xdot[i + 1]);
  }
  return rc;
}

int cpk__curv_terms_tangent(cpk_curvature_op *op, int i, int64_t k,
                            const cpk_tensor *xdot, cpk_tensor *ain,
                            int ain_zero, cpk_tensor **prods) {
  cpk__pass *pass = &op->pass;
  cpk__layer *l = pass->model->layers[i];
  const cpk_tensor *x = pass->acts[i], *g = op->grads[i + 1];
  int rc = CPK_OK;
  if (xdot == NULL)
    return CPK_OK;
  if (op->d2g[i] != NULL && ain != NULL) {
    /* ain[v] += h o xdot[v], h = f''(x) o g, for all columns at once */
    const int64_t m = cpk_tensor_numel(x);
    cpk_tensor *hx = ain;
    if (!ain_zero)
      rc = cpk__tensor_new_on(pass->ctx, &hx, x->dtype, xdot->ndim,
                              xdot->shape);
    if (rc != CPK_OK)
      return rc;
    cpk__mul_broadcast(pass->ctx, x->dtype, k, m, op->d2g[i]->data, xdot->data,
                       hx->data);
    if (hx != ain) {
      cpk__axpy(pass->ctx, x->dtype, k * m, 1.0, hx->data, ain->data);
      cpk_tensor_free(hx);
    }
  }
  if (l->kind->mixed_param_jac_t_mat == NULL)
    return rc;
  for (int t = 0; rc == CPK_OK && t < op->ntrain; t++)
    if (op->train[t].layer == l) /* Jtheta(x := xdot[v])^T g */
      rc = l->kind->mixed_param_jac_t_mat(l, pass->ctx, op->train[t].slot, x,
                                          g, xdot, prods[t]);
  return rc;
}

int cpk__curv_terms_direction(cpk_curvature_op *op, int i, cpk_tensor **tang,
                              cpk_tensor *ain) {
  cpk__pass *pass = &op->pass;
  cpk__layer *l = pass->model->layers[i];
  int rc = CPK_OK;
  if (l->kind->mixed_jac_t_mat == NULL)
    return CPK_OK;
  for (int t = 0; rc == CPK_OK && t < op->ntrain; t++)
    if (op->train[t].layer == l) /* J_x(theta := t[v])^T g */
      rc = l->kind->mixed_jac_t_mat(l, pass->ctx, op->train[t].slot,
                                    pass->acts[i], op->grads[i + 1], tang[t],
                                    ain);
  return rc;
}

/* The R-operator (and the other curvatures' J^T M J): the tangent sweep
 * keeping every xdot (the Hessian needs them on the way back), M at the
 * output, then the reverse sweep adding the second-order terms at each
 * layer as it passes (the Hessian). */
static int product_block(cpk_curvature_op *op, int64_t k, cpk_tensor **tang,
                         cpk_tensor **prods) {
  cpk__pass *pass = &op->pass;
  const cpk_model *m = pass->model;
  const int hess = op->kind == CPK_CURV_HESSIAN;
  cpk_tensor **xdot = cpk__calloc((size_t)(m->nlayers + 1) * sizeof *xdot);
  cpk_tensor *gdot = NULL;
  int rc = xdot ? CPK_OK : CPK_ENOMEM;
  for (int i = op->stop; rc == CPK_OK && i < m->nlayers; i++) {
    rc = cpk__curv_tangent_layer(op, i, k, xdot, tang);
    if (!hess && i > op->stop) { /* only the Hessian needs them later */
      cpk_tensor_free(xdot[i]);
      xdot[i] = NULL;
    }
  }
  const cpk__layer *last = m->layers[m->nlayers - 1];
  if (rc == CPK_OK &&
      (rc = cpk__block_new_on(pass->ctx, &gdot, m->dtype, k, pass->n,
                              last->out_ndim, last->out_shape)) == CPK_OK)
    rc = cpk__curv_output(op, xdot[m->nlayers], gdot);
  for (int i = m->nlayers - 1; rc == CPK_OK && i >= op->stop; i--) {
    cpk__layer *l = m->layers[i];
    for (int t = 0; rc == CPK_OK && t < op->ntrain; t++)
      if (op->train[t].layer == l)
        rc = l->kind->param_jac_t_mat(l, pass->ctx, op->train[t].slot,
                                      pass->acts[i], gdot, 0, 0.0, prods[t]);
    cpk_tensor *gin = NULL;
    if (rc == CPK_OK && i > op->stop &&
        (rc = cpk__block_new_on(pass->ctx, &gin, m->dtype, k, pass->n,
                                l->in_ndim, l->in_shape)) == CPK_OK)
      rc = l->kind->jac_t_mat(l, pass->ctx, pass->acts[i], pass->acts[i + 1],
                              gdot, gin);
    if (rc == CPK_OK && hess)
      rc = cpk__curv_terms_tangent(op, i, k, xdot[i], gin, 0, prods);
    if (rc == CPK_OK && hess && gin != NULL)
      rc = cpk__curv_terms_direction(op, i, tang, gin);
    cpk_tensor_free(gdot);
    gdot = gin;
  }
  cpk_tensor_free(gdot);
  for (int i = 0; xdot && i <= m->nlayers; i++)
    cpk_tensor_free(xdot[i]);
  cpk__free(xdot);
  return rc;
}

/* n doubles into t's data from element `at` on (the model's dtype). */
static void flat_to_dtype(cpk_dtype dt, int64_t n, const double *src,
                          cpk_tensor *t, int64_t at) {
  if (dt == CPK_F64) {
    memcpy((double *)t->data + at, src, (size_t)n * sizeof *src);
    return;
  }
  float *dst = (float *)t->data + at;
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    dst[i] = (float)src[i];
}

/* n elements of t from element `at` on, as doubles. */
static void dtype_to_flat(cpk_dtype dt, int64_t n, const cpk_tensor *t,
                          int64_t at, double *dst) {
  if (dt == CPK_F64) {
    memcpy(dst, (const double *)t->data + at, (size_t)n * sizeof *dst);
    return;
  }
  const float *src = (const float *)t->data + at;
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    dst[i] = src[i];
}

/* Whether all n values are finite (threads over long vectors). */
static int all_finite(int64_t n, const double *x) {
  int bad = 0;
#pragma omp parallel for simd schedule(static) reduction(| : bad) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    bad |= !isfinite(x[i]);
  return !bad;
}

/* The k vectors of `in` ([k, P] doubles) as one tensor in the model's
 * dtype, parameter t's block [k, *S_t] from element k * offset_t on (the
 * layout of the tangents and products); non-finite values refused. */
static int pack_tangents(cpk_curvature_op *op, int64_t k, const double *in,
                         cpk_tensor **out) {
  const cpk_dtype dt = op->pass.model->dtype;
  const int64_t total = k * op->dim;
  int rc = cpk__tensor_new_uninit(out, dt, 1, &total);
  for (int t = 0; rc == CPK_OK && t < op->ntrain; t++) {
    const cpk__param *q = &op->train[t].layer->params[op->train[t].slot];
    const int64_t ne = op->train[t].numel, base = k * op->train[t].offset;
    for (int64_t v = 0; rc == CPK_OK && v < k; v++) {
      const double *src = in + v * op->dim + op->train[t].offset;
      if (!all_finite(ne, src))
        rc = cpk__fail(CPK_ENONFINITE,
                       "vector %lld: non-finite value at parameter %d.%s",
                       (long long)v, op->train[t].layer->index, q->name);
      if (rc == CPK_OK)
        flat_to_dtype(dt, ne, src, *out, base + v * ne);
    }
  }
  return rc;
}

/* Views [k, *S_t] of parameter t's block in a packed tensor. */
static void param_views(const cpk_curvature_op *op, int64_t k,
                        const cpk_tensor *all, cpk_tensor *views,
                        cpk_tensor **ptrs) {
  const size_t es = cpk_dtype_size(all->dtype);
  for (int t = 0; t < op->ntrain; t++) {
    const cpk__param *q = &op->train[t].layer->params[op->train[t].slot];
    int64_t shape[CPK_MAX_DIMS + 1] = {k};
    memcpy(shape + 1, q->shape, (size_t)q->ndim * sizeof *shape);
    cpk__tensor_view(&views[t], all->dtype,
                     (char *)all->data + (size_t)(k * op->train[t].offset) * es,
                     q->ndim + 1, shape);
    views[t].device = all->device;
    ptrs[t] = &views[t];
  }
}

/* This rank's product (one pass): out[j] := C in[j]. */
static int apply_local(cpk_curvature_op *op, int64_t k, const double *in,
                       double *out) {
  const cpk_dtype dt = op->pass.model->dtype;
  cpk_context *ctx = op->pass.ctx;
  const size_t nt = (size_t)op->ntrain;
  cpk_tensor *tang_h = NULL, *tang_d = NULL, *prods_d = NULL, *prods_h = NULL;
  cpk_tensor *views = cpk__calloc(2 * nt * sizeof *views);
  cpk_tensor **ptrs = cpk__calloc(2 * nt * sizeof *ptrs);
  int rc = views && ptrs ? CPK_OK : CPK_ENOMEM;
  if (k < 1 && rc == CPK_OK)
    rc = cpk__fail(CPK_EINVAL, "curvature product of %lld vectors",
                   (long long)k);
  cpk__context_apply_threads(ctx);
  if (rc == CPK_OK)
    rc = pack_tangents(op, k, in, &tang_h);
  /* on the device: one upload of the k tangents, one download of the k
   * products */
  if (rc == CPK_OK && op->device)
    rc = cpk__tensor_to_device(ctx, tang_h, dt, &tang_d);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(ctx, &prods_d, dt, 1, tang_h->shape);
  if (rc == CPK_OK) {
    param_views(op, k, op->device ? tang_d : tang_h, views, ptrs);
    param_views(op, k, prods_d, views + nt, ptrs + nt);
    if (op->device)
      swap_params(op);
    rc = op->kind == CPK_CURV_HESSIAN && op->method == CPK_HVP_DOUBLE_BACKWARD
             ? cpk__curv_hessian_dbl(op, k, ptrs, ptrs + nt)
             : product_block(op, k, ptrs, ptrs + nt);
    if (op->device)
      swap_params(op);
  }
  if (rc == CPK_OK && op->device && (rc = cpk__device_sync(ctx)) == CPK_OK)
    rc = cpk_tensor_copy_to_host(prods_d, &prods_h);
  const cpk_tensor *prods = op->device ? prods_h : prods_d;
  for (int t = 0; rc == CPK_OK && t < op->ntrain; t++) {
    const int64_t ne = op->train[t].numel, base = k * op->train[t].offset;
    for (int64_t v = 0; v < k; v++)
      dtype_to_flat(dt, ne, prods, base + v * ne,
                    out + v * op->dim + op->train[t].offset);
  }
  if (op->device && rc != CPK_OK)
    (void)cpk__device_sync(ctx); /* the first failure is the one reported */
  cpk_tensor_free(tang_h);
  cpk_tensor_free(tang_d);
  cpk_tensor_free(prods_d);
  cpk_tensor_free(prods_h);
  cpk__free(views);
  cpk__free(ptrs);
  return rc;
}

/* The passes over the data set, one after the other: out := sum of their
 * products. */
static int apply_passes(cpk_curvature_op *op, int64_t k, const double *in,
                        double *out) {
  cpk_context *ctx = op->pass.ctx;
  double *part = cpk__malloc((size_t)(k * op->dim) * sizeof *part);
  int rc = part != NULL ? CPK_OK : CPK_ENOMEM;
  memset(out, 0, (size_t)(k * op->dim) * sizeof *out);
  for (int64_t at = 0; rc == CPK_OK && at < op->nlocal; at += op->max_batch) {
    const int64_t count =
        op->nlocal - at < op->max_batch ? op->nlocal - at : op->max_batch;
    cpk_tensor x, y;
    cpk_curvature_op *one = cpk__calloc(sizeof *one);
    if (one == NULL) {
      rc = CPK_ENOMEM;
      break;
    }
    cpk__rows_view(&x, op->input, at, count);
    cpk__rows_view(&y, op->target, at, count);
    rc = op_prepare(one, ctx, op->pass.model, &op->spec, &x, &y, op->kind,
                    op->first + at, op->total);
    one->method = op->method;
    if (rc == CPK_OK)
      rc = apply_local(one, k, in, part);
    for (int64_t i = 0; rc == CPK_OK && i < k * op->dim; i++)
      out[i] += part[i];
    cpk_curvature_op_free(one);
  }
  cpk__free(part);
  return rc;
}

int cpk_curvature_op_apply(cpk_curvature_op *op, int64_t k, const double *in,
                           double *out) {
  cpk__dist_begin(op->pass.ctx);
  int rc = op->max_batch > 0 ? apply_passes(op, k, in, out)
                             : apply_local(op, k, in, out);
  /* MPI: each rank's product covers its shard; the whole batch's is the sum,
   * the same bits on every rank (so iterative solvers stay in step). */
  return cpk__dist_sum(op->pass.ctx, rc, CPK_F64, out, k * op->dim);
}

static int apply_as_matvec(void *ud, int64_t k, const double *in,
                           double *out) {
  return cpk_curvature_op_apply(ud, k, in, out);
}

void cpk_curvature_op_as_operator(cpk_curvature_op *op, cpk_operator *out) {
  out->dim = op->dim;
  out->apply = apply_as_matvec;
  out->ud = op;
}
