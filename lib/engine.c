/*
 * engine.c: cpk_compute, the forward pass and the backward pass.
 *
 * Backward, for layer i = L-1 .. 0 with g = dL/d(output of layer i) held as
 * a block [1, N, *out_i]:
 *   grad(theta_p) = sum_n J_{theta_p,n}^T g_n   (param_jac_t_mat, V = 1)
 *   g            <- J_x^T g                      (jac_t_mat)
 * down to the lowest layer that has parameters (nothing below needs g).
 */
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "device_pass.h"
#include "engine.h"
#include "ops.h"
#include "results.h"

int cpk__block_new(cpk_tensor **out, cpk_dtype dt, int64_t v, int64_t n,
                   int ndim, const int64_t *shape) {
  return cpk__block_new_on(NULL, out, dt, v, n, ndim, shape);
}

/* A block [V, N, *shape] on the context's device, zero-filled or not. */
static int block_alloc(const cpk_context *ctx, cpk_tensor **out, cpk_dtype dt,
                       int64_t v, int64_t n, int ndim, const int64_t *shape,
                       int zero) {
  int64_t full[CPK_MAX_DIMS];
  if (ndim + 2 > CPK_MAX_DIMS)
    return cpk__fail(CPK_EINVAL, "block of %d axes (at most %d)", ndim + 2,
                     CPK_MAX_DIMS);
  full[0] = v;
  full[1] = n;
  memcpy(full + 2, shape, (size_t)ndim * sizeof *shape);
  return zero ? cpk__tensor_new_on(ctx, out, dt, ndim + 2, full)
              : cpk__tensor_new_on_uninit(ctx, out, dt, ndim + 2, full);
}

int cpk__block_new_on(const cpk_context *ctx, cpk_tensor **out, cpk_dtype dt,
                      int64_t v, int64_t n, int ndim, const int64_t *shape) {
  return block_alloc(ctx, out, dt, v, n, ndim, shape, 1);
}

int cpk__check_input(const cpk_model *m, const cpk_tensor *input) {
  char want[128], got[128];
  int64_t shape[CPK_MAX_DIMS];
  if (!m->built)
    return cpk__fail(CPK_EINVAL, "%s: the model is not built (cpk_model_build)",
                     m->source);
  if (input == NULL)
    return cpk__fail(CPK_EINVAL, "input: missing");
  if (cpk__require_host(input, "input") != CPK_OK)
    return CPK_EUSAGE;
  if (!cpk__is_float(input->dtype))
    return cpk__fail(CPK_EINVAL, "input: expected float32 or float64, got %s",
                     cpk_dtype_name(input->dtype));
  if (input->ndim >= 1 && input->shape[0] == 0)
    return cpk__fail(CPK_ESHAPE, "input: the batch is empty (N = 0)");
  int same = input->ndim == m->in_ndim + 1;
  for (int i = 0; same && i < m->in_ndim; i++)
    same = input->shape[i + 1] == m->in_shape[i];
  if (!same) {
    shape[0] = input->ndim > 0 ? input->shape[0] : 0;
    memcpy(shape + 1, m->in_shape, (size_t)m->in_ndim * sizeof *shape);
    return cpk__fail(CPK_ESHAPE,
                     "input: expected shape (N, ...) = %s, got %s",
                     cpk_shape_str(want, sizeof want, m->in_ndim + 1, shape),
                     cpk_shape_str(got, sizeof got, input->ndim, input->shape));
  }
  return cpk__check_finite_in(input, m->dtype, "input");
}

static int check_target(const cpk_model *m, const cpk__loss_def *loss,
                        const cpk_tensor *input, const cpk_tensor *target) {
  /* A header-only tensor of the output's shape stands for the output. */
  cpk_tensor f;
  int64_t shape[CPK_MAX_DIMS];
  const cpk__layer *last = m->layers[m->nlayers - 1];
  shape[0] = input->shape[0];
  memcpy(shape + 1, last->out_shape, (size_t)last->out_ndim * sizeof *shape);
  cpk__tensor_view(&f, m->dtype, NULL, last->out_ndim + 1, shape);
  return loss->check_target(&f, target);
}

int cpk_check_pass(const cpk_model *model, const cpk_pass_spec *spec,
                   const cpk_tensor *input, const cpk_tensor *target) {
  const cpk__extension_entry *ext[CPK__MAX_EXTENSIONS];
  int next, rc;
  const cpk__loss_def *loss = cpk__loss_get(spec->loss);
  if (loss == NULL)
    return cpk__fail(CPK_EINVAL, "unknown loss kind %d", (int)spec->loss);
  if (spec->reduction != CPK_REDUCTION_MEAN &&
      spec->reduction != CPK_REDUCTION_SUM)
    return cpk__fail(CPK_EINVAL, "unknown reduction %d", (int)spec->reduction);
  if ((rc = cpk__extensions_parse(spec->extensions, ext, &next)) != CPK_OK)
    return rc;
  if ((rc = cpk__check_input(model, input)) != CPK_OK ||
      (rc = cpk__require_host(target, "target")) != CPK_OK)
    return rc;
  return check_target(model, loss, input, target);
}

void cpk__pass_release(cpk__pass *pass) {
  if (pass->acts == NULL)
    return;
  for (int i = pass->owns_input ? 0 : 1; i <= pass->model->nlayers; i++)
    cpk_tensor_free(pass->acts[i]);
  cpk__free(pass->acts);
  pass->acts = NULL;
}

int cpk__forward(cpk__pass *pass, const cpk_tensor *input) {
  cpk_model *m = pass->model;
  int rc;
  pass->acts = cpk__calloc((size_t)(m->nlayers + 1) * sizeof *pass->acts);
  if (pass->acts == NULL)
    return CPK_ENOMEM;
  pass->n = input->shape[0];
  int64_t first;
  cpk__context_shard(pass->ctx, pass->n, &first, &pass->n_total);
  if (cpk__on_cuda(pass->ctx)) { /* the one upload of the input */
    if ((rc = cpk__tensor_to_device(pass->ctx, input, m->dtype,
                                    &pass->acts[0])) != CPK_OK)
      return cpk__fail_prefix(rc, "input");
    pass->owns_input = 1;
  } else if (input->dtype == m->dtype) {
    pass->acts[0] = (cpk_tensor *)input; /* read only */
    pass->owns_input = 0;
  } else {
    if ((rc = cpk_tensor_convert(&pass->acts[0], input, m->dtype)) != CPK_OK)
      return rc;
    pass->owns_input = 1;
  }
  for (int i = 0; i < m->nlayers; i++) {
    cpk__layer *l = m->layers[i];
    int64_t shape[CPK_MAX_DIMS];
    shape[0] = pass->n;
    memcpy(shape + 1, l->out_shape, (size_t)l->out_ndim * sizeof *shape);
    rc = l->kind->fills_output
             ? cpk__tensor_new_on_uninit(pass->ctx, &pass->acts[i + 1],
                                         m->dtype, l->out_ndim + 1, shape)
             : cpk__tensor_new_on(pass->ctx, &pass->acts[i + 1], m->dtype,
                                  l->out_ndim + 1, shape);
    if (rc != CPK_OK)
      return cpk__fail_prefix(rc, "%s: forward", l->where);
    if ((rc = l->kind->forward(l, pass->ctx, pass->acts[i], pass->acts[i + 1],
                               pass->spec->training)) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

/* A dense Linear weight's per-sample gradients g[n] x[n]^T, handed over as
 * the factors g [N, OUT] (a view of the block [1, N, OUT]) and x. */
static int visit_factors(const cpk__param_site *site) {
  const cpk_pass_options *opts = site->visit_opts;
  cpk_tensor g;
  const int64_t shape[2] = {site->n, site->g->shape[2]};
  cpk__tensor_view(&g, site->g->dtype, site->g->data, 2, shape);
  return opts->visit_grad_factors(opts->visit_ud, site->name, &g, site->x);
}

/* Hand one chunk of per-sample gradients to the caller's visitor. */
static int visit_chunk(void *ud, int64_t first, const cpk_tensor *chunk) {
  const cpk__param_site *site = ud;
  const cpk_pass_options *opts = site->visit_opts;
  return opts->visit_grad_batch(opts->visit_ud, site->name,
                                site->ctx->shard_first + first, chunk);
}

/* The gradient of parameter p of layer l into grad, and every requested
 * extension there; the layer's input is acts[l->index] and its output sees
 * the current blocks. */
static int grad_and_extensions(cpk__pass *pass, cpk__layer *l, int p,
                               cpk_tensor *grad) {
  char name[48];
  int rc = CPK_OK;
  const cpk_pass_options *opts = pass->opts;
  const int visit = opts != NULL && (opts->visit_grad_batch != NULL ||
                                     opts->visit_grad_factors != NULL);
  const cpk_tensor *g = pass->blocks[CPK__BLOCK_GRAD];
  snprintf(name, sizeof name, "%d.%s", l->index, l->params[p].name);
  cpk__param_site site = {.ctx = pass->ctx,
                          .layer = l,
                          .p = p,
                          .name = name,
                          .n = pass->n,
                          .n_mean = pass->n_total,
                          .x = pass->acts[l->index],
                          .g = g,
                          .grad = grad,
                          .sqrt_exact = pass->blocks[CPK__BLOCK_SQRT_EXACT],
                          .sqrt_mc = pass->blocks[CPK__BLOCK_SQRT_MC],
                          .hterms = pass->hterms,
                          .kfra = pass->kfra,
                          .results = pass->results,
                          .visit_opts = pass->opts};
  const int dense = cpk__site_is_dense_linear(&site);
  if (!dense && ((pass->needs & CPK__NEED_GRAD_BATCH) ||
                 ((pass->needs & CPK__NEED_PER_SAMPLE) &&
                  cpk__site_chunk_samples(&site, 1) >= pass->n))) {
    /* grad = sum_n grad_batch[n] (beta = 0: every element written) */
    const cpk_tensor *gb;
    rc = cpk__site_grad_batch(&site, &gb);
    if (rc == CPK_OK)
      cpk__sum_rows(pass->ctx, grad->dtype, 1, pass->n, cpk_tensor_numel(grad),
                    gb->data, 0.0, grad->data);
  } else { /* beta = 0: param_jac_t_mat writes every element */
    rc = l->kind->param_jac_t_mat(l, pass->ctx, p, pass->acts[l->index], g, 0,
                                  0.0, grad);
  }
  if (rc != CPK_OK || (pass->next == 0 && !visit)) {
    cpk__site_release(&site);
    return rc;
  }
  for (int e = 0; e < pass->next && rc == CPK_OK; e++) {
    rc = pass->ext[e]->impl->param(&site);
    if (rc == CPK_ENOTSUP && opts != NULL && opts->skip_unsupported) {
      cpk_clear_error(); /* this parameter goes without that extension */
      rc = CPK_OK;
    }
  }
  if (rc == CPK_OK && visit && opts->visit_grad_factors != NULL && p == 0 &&
      dense)
    rc = visit_factors(&site);
  else if (rc == CPK_OK && visit && opts->visit_grad_batch != NULL)
    rc = cpk__site_foreach_chunk(&site, visit_chunk, &site);
  cpk__site_release(&site);
  return rc;
}

/* The gradient of every parameter of layer i from g [1, N, *out_i], and the
 * extensions at each. */
static int param_grads(cpk__pass *pass, int i) {
  cpk__layer *l = pass->model->layers[i];
  for (int p = 0; p < l->nparams; p++) {
    char name[64];
    cpk_tensor *grad;
    int rc;
    if (!l->params[p].trainable)
      continue;
    snprintf(name, sizeof name, "%d.%s.grad", i, l->params[p].name);
    if ((rc = cpk__results_alloc_uninit(pass->results, name,
                                        pass->model->dtype, l->params[p].ndim,
                                        l->params[p].shape, &grad)) != CPK_OK)
      return rc;
    if ((rc = grad_and_extensions(pass, l, p, grad)) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

/* The lowest layer with trainable parameters: below it nothing needs g. */
static int first_trained_layer(const cpk_model *m) {
  for (int i = 0; i < m->nlayers; i++)
    for (int p = 0; p < m->layers[i]->nparams; p++)
      if (m->layers[i]->params[p].trainable)
        return i;
  return m->nlayers;
}

/* KFRA's matrix summed over the MPI ranks (a collective: a rank whose rc
 * failed still takes part). On a device pass it goes through host memory,
 * so the ranks' MPI need not be CUDA-aware. */
static int kfra_sum_ranks(cpk__pass *pass, int rc) {
  cpk_tensor *k = pass->kfra, *host = NULL;
  if (pass->ctx->dist.size <= 1)
    return rc;
  if (rc == CPK_OK && k->device != NULL)
    rc = cpk_tensor_copy_to_host(k, &host);
  const cpk_tensor *t = host != NULL ? host : k;
  rc = cpk__dist_sum(pass->ctx, rc, k->dtype, rc == CPK_OK ? t->data : NULL,
                     rc == CPK_OK ? cpk_tensor_numel(t) : 0);
  if (rc == CPK_OK && host != NULL)
    rc = cpk__tensor_fill_from_host(pass->ctx, k, host);
  cpk_tensor_free(host);
  return rc;
}

/* A ReLU whose output reaches max pooling layer i through zero padding
 * alone (none, or zeropad2d layers): its index, else -1. Each window's
 * winner is then a ReLU output (or a padded zero), positive exactly where
 * the pooled output y is, so for a block b at the pooling's output
 *   J_relu^T J_pad^T J_pool^T b = J_pad^T J_pool^T (b o [y > 0])
 * (f'(x) = [x > 0], 0 at the kink as PyTorch's): the mask goes on the
 * pooled block, a fraction of the ReLU's, and the ReLU's own pass is left
 * out. Not while the Hessian terms are carried (they read the gradient
 * block at every layer). */
static int relu_before_pool(const cpk__pass *pass, int i) {
  const cpk_model *m = pass->model;
  const cpk__layer_kind *k = m->layers[i]->kind;
  if (pass->hterms != NULL ||
      (k != &cpk__maxpool1d_kind && k != &cpk__maxpool2d_kind &&
       k != &cpk__maxpool3d_kind))
    return -1;
  int j = i - 1;
  while (j >= 0 && m->layers[j]->kind == &cpk__zeropad2d_kind)
    j--;
  return j >= 0 && m->layers[j]->kind == &cpk__relu_kind ? j : -1;
}

/* b o [y > 0] in place, for each of the V columns of block b. */
static void mask_positive(const cpk_context *ctx, cpk_tensor *b,
                          const cpk_tensor *y) {
  const int64_t m = cpk_tensor_numel(y), v = cpk_tensor_numel(b) / m;
  const size_t es = cpk_dtype_size(b->dtype);
  for (int64_t c = 0; c < v; c++) {
    char *col = (char *)b->data + (size_t)(c * m) * es;
    cpk__act_d1_mul(ctx, b->dtype, CPK__ACT_RELU, 0.0, m, y->data, y->data,
                    col, col);
  }
}

/* Every block B at the output of layer i becomes J^T B at its input, and
 * so do the Hessian terms and KFRA's matrix. */
static int propagate_blocks(cpk__pass *pass, int i) {
  cpk__layer *l = pass->model->layers[i];
  const cpk_tensor *x = pass->acts[i], *y = pass->acts[i + 1];
  int rc = CPK_OK;
  if (pass->hterms != NULL)
    rc = cpk__hterms_through(pass->hterms, l, pass->ctx, x, y,
                             pass->blocks[CPK__BLOCK_GRAD]);
  if (rc == CPK_OK && pass->kfra != NULL)
    rc = cpk__kfra_through(&pass->kfra, l, pass->ctx, x, y);
  if (pass->kfra != NULL) {
    /* Gbar_in = (1/N) sum_n J_n^T Gbar J_n over the whole batch: each
     * shard's mean weighted by its share, summed over the ranks (a
     * collective at every layer; a rank that failed still takes part). */
    if (rc == CPK_OK && pass->n_total != pass->n)
      cpk__scale(pass->ctx, pass->kfra->dtype, cpk_tensor_numel(pass->kfra),
                 (double)pass->n / (double)pass->n_total, pass->kfra->data);
    rc = kfra_sum_ranks(pass, rc);
  }
  if (rc != CPK_OK)
    return rc;
  if (pass->relu_taken == i + 1) { /* J^T was applied at the pooling above */
    pass->relu_taken = 0;
    return CPK_OK;
  }
  const int relu = relu_before_pool(pass, i);
  if (relu >= 0)
    pass->relu_taken = relu + 1;
  for (int b = 0; b < CPK__NBLOCKS; b++) {
    cpk_tensor *in = pass->blocks[b], *out = NULL;
    if (in == NULL)
      continue;
    if (relu >= 0) /* the block is the pass's own and not read again */
      mask_positive(pass->ctx, in, y);
    rc = block_alloc(pass->ctx, &out, in->dtype, in->shape[0], pass->n,
                     l->in_ndim, l->in_shape, !l->kind->fills_output);
    if (rc == CPK_OK)
      rc = l->kind->jac_t_mat(l, pass->ctx, x, y, in, out);
    if (rc != CPK_OK) {
      cpk_tensor_free(out);
      return rc;
    }
    cpk_tensor_free(in);
    pass->blocks[b] = out;
  }
  return CPK_OK;
}

static int backward(cpk__pass *pass) {
  cpk_model *m = pass->model;
  const int stop = first_trained_layer(m);
  int rc = CPK_OK;
  for (int i = m->nlayers - 1; i >= stop && rc == CPK_OK; i--) {
    if ((rc = param_grads(pass, i)) != CPK_OK || i == stop)
      break;
    rc = propagate_blocks(pass, i);
  }
  return rc;
}

/* The steps of the loss, computed on the host (their size is N times the
 * output features; on a device pass the output comes down and the block
 * goes up). */
enum loss_step { LOSS_VALUE_GRAD, LOSS_SQRT_EXACT, LOSS_SQRT_COMPACT,
                 LOSS_SQRT_MC };

static int loss_step(cpk__pass *pass, enum loss_step step, const cpk_tensor *f,
                     const cpk_tensor *target, double *value, cpk__rng *rng,
                     cpk_tensor *out) {
  const cpk__loss_def *loss = pass->loss;
  cpk_context *ctx = pass->ctx;
  cpk_tensor *f_host = NULL, *out_host = NULL;
  int rc = CPK_OK;
  if (cpk__on_cuda(ctx)) {
    if ((rc = cpk_tensor_copy_to_host(f, &f_host)) == CPK_OK)
      rc = cpk_tensor_new(&out_host, out->dtype, out->ndim, out->shape);
    ctx = cpk__context_host(ctx);
    f = f_host;
  }
  cpk_tensor *o = out_host != NULL ? out_host : out;
  if (rc == CPK_OK && step == LOSS_VALUE_GRAD)
    rc = loss->value_grad(ctx, pass->scale, f, target, value, o);
  else if (rc == CPK_OK && step == LOSS_SQRT_EXACT)
    rc = loss->sqrt_hessian(ctx, pass->scale, f, target, o);
  else if (rc == CPK_OK && step == LOSS_SQRT_COMPACT)
    rc = loss->compact_sqrt_hessian(ctx, pass->scale, f, target, o);
  else if (rc == CPK_OK)
    rc = loss->sqrt_hessian_mc(ctx, pass->scale, f, pass->ctx->mc_samples,
                               rng, o);
  if (rc == CPK_OK && out_host != NULL)
    rc = cpk__tensor_fill_from_host(pass->ctx, out, out_host);
  cpk_tensor_free(f_host);
  cpk_tensor_free(out_host);
  return rc;
}

/* The exact square root of the loss Hessian as a block [V, N, *out] at the
 * model output: the loss's compact root (fewer columns, the same outer
 * products) unless an extension hands out the root itself. */
static int exact_root(cpk__pass *pass, const cpk_tensor *target,
                      cpk_tensor **root) {
  const cpk_tensor *f = pass->acts[pass->model->nlayers];
  const cpk__layer *last = pass->model->layers[pass->model->nlayers - 1];
  /* (one class: the compact root has no column, the Hessian is 0; the
   * contract's root, a column of zeros, keeps every block non-empty) */
  const int compact = pass->loss->compact_sqrt_hessian != NULL &&
                      !(pass->needs & CPK__NEED_SQRT_CONTRACT) &&
                      pass->loss->compact_sqrt_columns(f) > 0;
  int rc = cpk__block_new_on(pass->ctx, root, f->dtype,
                             compact ? pass->loss->compact_sqrt_columns(f)
                                     : pass->loss->sqrt_columns(f),
                             pass->n, last->out_ndim, last->out_shape);
  if (rc == CPK_OK)
    rc = loss_step(pass, compact ? LOSS_SQRT_COMPACT : LOSS_SQRT_EXACT, f,
                   target, NULL, NULL, *root);
  return rc;
}

/* The Hessian terms and KFRA's matrix start from the exact square root of
 * the loss Hessian (computed here unless an extension keeps it anyway). */
static int start_from_exact_root(cpk__pass *pass, const cpk_tensor *target) {
  cpk_tensor *root = pass->blocks[CPK__BLOCK_SQRT_EXACT], *own = NULL;
  int rc = CPK_OK;
  if (root == NULL) {
    rc = exact_root(pass, target, &own);
    root = own;
  }
  if (rc == CPK_OK && (pass->needs & CPK__NEED_HESSIAN_TERMS)) {
    if ((pass->hterms = cpk__calloc(sizeof *pass->hterms)) == NULL)
      rc = CPK_ENOMEM;
    else
      rc = cpk__hterms_start(pass->hterms, pass->ctx, root);
  }
  if (rc == CPK_OK && (pass->needs & CPK__NEED_KFRA)) {
    /* Gbar = c sum_n d^2 l_n / df_n^2: summed over the ranks */
    rc = cpk__kfra_start(pass->ctx, root, &pass->kfra);
    if (rc == CPK_OK)
      rc = kfra_sum_ranks(pass, rc);
  }
  cpk_tensor_free(own);
  return rc;
}

/* The square roots of the loss Hessian the extensions need, as blocks
 * [V, N, *out] at the model output. Monte Carlo draws start from the
 * context's seed at every pass, so a pass is reproducible. */
static int loss_sqrt_blocks(cpk__pass *pass, const cpk_tensor *target) {
  const cpk_tensor *f = pass->acts[pass->model->nlayers];
  const cpk__layer *last = pass->model->layers[pass->model->nlayers - 1];
  int rc = CPK_OK;
  if (pass->needs & CPK__NEED_SQRT_EXACT)
    rc = exact_root(pass, target, &pass->blocks[CPK__BLOCK_SQRT_EXACT]);
  if (rc == CPK_OK && (pass->needs & (CPK__NEED_HESSIAN_TERMS | CPK__NEED_KFRA)))
    rc = start_from_exact_root(pass, target);
  if (rc == CPK_OK && (pass->needs & CPK__NEED_SQRT_MC)) {
    cpk__rng rng;
    cpk__rng_seed(&rng, pass->ctx->seed);
    rc = cpk__block_new_on(pass->ctx, &pass->blocks[CPK__BLOCK_SQRT_MC],
                           f->dtype, pass->ctx->mc_samples, pass->n,
                           last->out_ndim, last->out_shape);
    if (rc == CPK_OK)
      rc = loss_step(pass, LOSS_SQRT_MC, f, NULL, NULL, &rng,
                     pass->blocks[CPK__BLOCK_SQRT_MC]);
  }
  return rc;
}

/* Loss value and its gradient as the block [1, N, *out] that starts the
 * backward pass. */
static int loss_and_grad(cpk__pass *pass, const cpk_tensor *target) {
  const cpk_tensor *f = pass->acts[pass->model->nlayers];
  const cpk__layer *last = pass->model->layers[pass->model->nlayers - 1];
  cpk_tensor *loss, *output, **g = &pass->blocks[CPK__BLOCK_GRAD];
  double value;
  int rc;
  pass->scale = cpk__loss_scale_total(pass->loss, pass->spec->reduction, f,
                                      pass->n_total);
  if ((rc = cpk__block_new_on(pass->ctx, g, f->dtype, 1, pass->n,
                              last->out_ndim, last->out_shape)) != CPK_OK)
    return rc;
  if ((rc = loss_step(pass, LOSS_VALUE_GRAD, f, target, &value, NULL, *g)) !=
      CPK_OK)
    return rc;
  if ((rc = cpk_tensor_new(&loss, f->dtype, 0, NULL)) != CPK_OK ||
      (rc = cpk__results_add(pass->results, "loss", loss)) != CPK_OK)
    return rc;
  cpk_tensor_set(loss, 0, value);
  if ((rc = cpk__results_alloc(pass->results, "output", f->dtype, f->ndim,
                               f->shape, &output)) != CPK_OK)
    return rc;
  cpk__copy(pass->ctx, f->dtype, cpk_tensor_numel(f), f->data, output->data);
  return loss_sqrt_blocks(pass, target);
}

/* A pass on the CUDA device: refuse what it does not cover, then allocate
 * results there and copy the parameters over. */
static int device_pass_begin(cpk__pass *pass) {
  const cpk_pass_options *opts = pass->opts;
  int rc = cpk__device_covers(pass->ctx, pass->model, 0, NULL);
  if (rc == CPK_OK && opts != NULL &&
      (opts->visit_grad_batch != NULL || opts->visit_grad_factors != NULL))
    rc = cpk__host_only(pass->ctx, "visiting per-sample gradients");
  if (rc != CPK_OK)
    return rc;
  cpk__results_on(pass->results, pass->ctx);
  return cpk__model_to_device(pass->ctx, pass->model);
}

int cpk_compute(cpk_context *ctx, cpk_model *model, const cpk_pass_spec *spec,
                const cpk_tensor *input, const cpk_tensor *target,
                cpk_results **out) {
  return cpk_compute_ex(ctx, model, spec, NULL, input, target, out);
}

/* Whether a pass leaves its results in device memory: asked for, on a
 * CUDA context, and this process holds the whole batch (the ranks' results
 * are combined through host memory). */
static int keep_on_device(const cpk_context *ctx,
                          const cpk_pass_options *opts) {
  return opts != NULL && opts->results_on_device && cpk__on_cuda(ctx) &&
         ctx->dist.size <= 1;
}

/* One forward and backward pass over `input` (checked by the caller). */
static int one_pass(cpk_context *ctx, cpk_model *model,
                    const cpk_pass_spec *spec, const cpk_pass_options *opts,
                    const cpk_tensor *input, const cpk_tensor *target,
                    cpk_results **out) {
  cpk__pass pass = {.opts = opts};
  int rc, device = 0;
  *out = NULL;
  cpk__context_apply_threads(ctx);
  pass.ctx = ctx;
  pass.model = model;
  pass.spec = spec;
  pass.loss = cpk__loss_get(spec->loss);
  CPK__TRY(rc, cpk__extensions_parse(spec->extensions, pass.ext, &pass.next),
           done);
  for (int e = 0; e < pass.next; e++)
    pass.needs |= pass.ext[e]->impl->needs;
  CPK__TRY(rc, cpk__results_new(&pass.results), done);
  if (cpk__on_cuda(ctx)) {
    CPK__TRY(rc, device_pass_begin(&pass), done);
    device = 1;
  }
  CPK__TRY(rc, cpk__forward(&pass, input), done);
  CPK__TRY(rc, loss_and_grad(&pass, target), done);
  CPK__TRY(rc, backward(&pass), done);
  /* the pass is complete (its first failure reported), then the one
   * download of the results unless they stay on the device */
  if (device && (rc = cpk__device_sync(ctx)) == CPK_OK &&
      !keep_on_device(ctx, opts))
    rc = cpk_results_to_host(pass.results);
done:
  if (device)
    cpk__model_release_device(model);
  for (int b = 0; b < CPK__NBLOCKS; b++)
    cpk_tensor_free(pass.blocks[b]);
  if (pass.hterms != NULL)
    cpk__hterms_free(pass.hterms);
  cpk__free(pass.hterms);
  cpk_tensor_free(pass.kfra);
  cpk__pass_release(&pass);
  if (rc != CPK_OK) {
    cpk_results_free(pass.results);
  } else {
    cpk__results_on(pass.results, NULL); /* the pass's allocations end */
    *out = pass.results;
  }
  return rc;
}

/* ------------------------------------------- a batch in shards (MPI, passes)
 * Each pass covers a shard [first, first + n) of the whole batch of `total`
 * samples (context.h): the loss scale and Kronecker means use `total`, Monte
 * Carlo draws skip those of the other samples. Its results then combine by
 * name: sums over samples add, per-sample results are concatenated in
 * sample order, KFRA's output factor is already the whole batch's (summed
 * over ranks at every layer). Variance and pairwise dot products are not
 * combinable from the shards' own values; they are computed at the end from
 * the combined second moment and gradient, and from the gathered per-sample
 * gradients. */

enum { COMB_SUM, COMB_CAT0, COMB_CAT1, COMB_SAME };

static int combine_kind(const char *name, int *kind) {
  static const struct {
    const char *suffix;
    int kind;
  } table[] = {
      {"grad", COMB_SUM},           {"grad_batch", COMB_CAT0},
      {"batch_l2", COMB_CAT0},      {"sum_grad_squared", COMB_SUM},
      {"diag_ggn_exact", COMB_SUM}, {"diag_ggn_mc", COMB_SUM},
      {"diag_h", COMB_SUM},         {"diag_ggn_exact_batch", COMB_CAT0},
      {"diag_ggn_mc_batch", COMB_CAT0}, {"diag_h_batch", COMB_CAT0},
      {"kfac.0", COMB_SUM},         {"kfac.1", COMB_SUM},
      {"kflr.0", COMB_SUM},         {"kflr.1", COMB_SUM},
      {"kfra.0", COMB_SAME},        {"kfra.1", COMB_SUM},
      {"sqrt_ggn_exact", COMB_CAT1}, {"sqrt_ggn_mc", COMB_CAT1},
  };
  if (strcmp(name, "loss") == 0)
    return *kind = COMB_SUM, CPK_OK;
  if (strcmp(name, "output") == 0)
    return *kind = COMB_CAT0, CPK_OK;
  const char *dot = strchr(name, '.');
  dot = dot ? strchr(dot + 1, '.') : NULL;
  for (size_t i = 0; dot && i < sizeof table / sizeof table[0]; i++)
    if (strcmp(dot + 1, table[i].suffix) == 0)
      return *kind = table[i].kind, CPK_OK;
  return cpk__fail(CPK_ENOTSUP, "result %s: no rule to combine it over shards",
                   name);
}

/* What the shards compute for the requested extensions: variance needs the
 * second moment, batch_dot_grad the per-sample gradients. */
typedef struct {
  int variance, batch_dot, has_sgs, has_batch_grad, kfra;
  char list[512];
} shard_plan;

static int plan_shards(const char *requested, shard_plan *p) {
  const cpk__extension_entry *ext[CPK__MAX_EXTENSIONS];
  int next, rc;
  memset(p, 0, sizeof *p);
  if ((rc = cpk__extensions_parse(requested, ext, &next)) != CPK_OK)
    return rc;
  size_t at = 0;
  for (int e = 0; e < next; e++) {
    const char *name = ext[e]->name;
    p->variance |= strcmp(name, "variance") == 0;
    p->batch_dot |= strcmp(name, "batch_dot_grad") == 0;
    p->has_sgs |= strcmp(name, "sum_grad_squared") == 0;
    p->has_batch_grad |= strcmp(name, "batch_grad") == 0;
    p->kfra |= strcmp(name, "kfra") == 0;
    if (strcmp(name, "variance") && strcmp(name, "batch_dot_grad"))
      at += (size_t)snprintf(p->list + at, sizeof p->list - at, "%s%s",
                             at ? "," : "", name);
  }
  if (p->variance && !p->has_sgs)
    at += (size_t)snprintf(p->list + at, sizeof p->list - at, "%s%s",
                           at ? "," : "", "sum_grad_squared");
  if (p->batch_dot && !p->has_batch_grad)
    snprintf(p->list + at, sizeof p->list - at, "%s%s", at ? "," : "",
             "batch_grad");
  return CPK_OK;
}

void cpk__rows_view(cpk_tensor *view, const cpk_tensor *t, int64_t first,
                    int64_t count) {
  const int64_t per = cpk_tensor_numel(t) / t->shape[0];
  cpk__tensor_view(view, t->dtype,
                   (char *)t->data + (size_t)(first * per) * cpk_dtype_size(t->dtype),
                   t->ndim, t->shape);
  view->shape[0] = count;
  cpk__tensor_contiguous_strides(view);
}

/* Copy part (axis `axis` of length count) into acc at position `at`, both
 * where `on` computes. */
static void place(const cpk_context *on, cpk_tensor *acc,
                  const cpk_tensor *part, int axis, int64_t at) {
  const int64_t lead = axis == 1 ? part->shape[0] : 1;
  const int64_t cnt = part->shape[axis], all = acc->shape[axis];
  const int64_t per = cpk_tensor_numel(part) / (lead * cnt);
  const size_t es = cpk_dtype_size(part->dtype);
  for (int64_t v = 0; v < lead; v++)
    cpk__copy(on, part->dtype, cnt * per,
              (const char *)part->data + (size_t)(v * cnt * per) * es,
              (char *)acc->data + (size_t)((v * all + at) * per) * es);
}

/* Add the results of the pass over local samples [at, at + count) to acc
 * (created at the first pass, per-sample results sized for nlocal), each
 * where the pass left it: on ctx's device or on the host. */
static int accumulate(cpk_context *ctx, cpk_results **acc, cpk_results *part,
                      int64_t at, int64_t nlocal) {
  int rc = CPK_OK, kind;
  if (*acc == NULL && (rc = cpk__results_new(acc)) != CPK_OK)
    return rc;
  const int fresh = cpk_results_count(*acc) == 0;
  if (!fresh && cpk_results_count(*acc) != cpk_results_count(part))
    return cpk__fail(CPK_EINVAL, "passes gave different results");
  for (int i = 0; rc == CPK_OK && i < cpk_results_count(part); i++) {
    const char *name = cpk_results_name(part, i);
    const cpk_tensor *t = cpk_results_tensor(part, i);
    const cpk_context *on = t->device != NULL ? ctx : NULL;
    cpk_tensor *a;
    if ((rc = combine_kind(name, &kind)) != CPK_OK)
      break;
    if (fresh) {
      int64_t shape[CPK_MAX_DIMS];
      memcpy(shape, t->shape, sizeof shape);
      if (kind == COMB_CAT0 || kind == COMB_CAT1)
        shape[kind == COMB_CAT0 ? 0 : 1] = nlocal;
      cpk__results_on(*acc, on);
      if ((rc = cpk__results_alloc(*acc, name, t->dtype, t->ndim, shape, &a)) !=
          CPK_OK)
        break;
    } else {
      a = (cpk_tensor *)cpk_results_tensor(*acc, i);
    }
    if (kind == COMB_CAT0 || kind == COMB_CAT1)
      place(on, a, t, kind == COMB_CAT0 ? 0 : 1, at);
    else if (kind == COMB_SUM)
      cpk__axpy(on, t->dtype, cpk_tensor_numel(t), 1.0, t->data, a->data);
    else if (fresh)
      cpk__copy(on, t->dtype, cpk_tensor_numel(t), t->data, a->data);
  }
  return rc;
}

/* Combine the ranks' results (collective; rc is this rank's status). */
static int combine_ranks(cpk_context *ctx, int rc, cpk_results *r) {
  int kind;
  if ((rc = cpk__dist_agree(ctx, rc)) != CPK_OK || ctx->dist.size <= 1)
    return rc;
  for (int i = 0; rc == CPK_OK && i < cpk_results_count(r); i++) {
    cpk_tensor *t = (cpk_tensor *)cpk_results_tensor(r, i), *all = NULL;
    int lrc = combine_kind(cpk_results_name(r, i), &kind);
    if (lrc == CPK_OK && kind == COMB_SAME)
      continue;
    if (lrc == CPK_OK && kind == COMB_SUM) {
      rc = cpk__dist_sum(ctx, lrc, t->dtype, t->data, cpk_tensor_numel(t));
    } else {
      rc = cpk__dist_gather(ctx, lrc, t, kind == COMB_CAT1 ? 1 : 0, &all);
      if (rc == CPK_OK)
        cpk__results_set(r, i, all);
    }
  }
  return rc;
}

/* variance = (sgs - grad^2 / N) / N and batch_dot = B B^T from the combined
 * results, computed where they are (`on`: ctx's device, or NULL for the
 * host); then drop what only they needed. */
static int finish_shards(const cpk_context *on, const shard_plan *p,
                         int64_t total, cpk_results *r) {
  char name[96], base[64], full[96];
  int rc = CPK_OK;
  const int count = cpk_results_count(r);
  for (int i = 0; rc == CPK_OK && i < count; i++) {
    /* a copy: adding a result may move the list and its names */
    snprintf(full, sizeof full, "%s", cpk_results_name(r, i));
    const size_t len = strlen(full);
    const cpk_tensor *t = cpk_results_tensor(r, i);
    cpk_tensor *out;
    if (p->variance && len > 17 &&
        strcmp(full + len - 17, ".sum_grad_squared") == 0) {
      snprintf(base, sizeof base, "%.*s", (int)(len - 17), full);
      snprintf(name, sizeof name, "%s.grad", base);
      const cpk_tensor *grad = cpk_results_find(r, name);
      snprintf(name, sizeof name, "%s.variance", base);
      if (grad == NULL)
        return cpk__fail(CPK_EINVAL, "%s: no gradient for the variance", base);
      if ((rc = cpk__results_alloc(r, name, t->dtype, t->ndim, t->shape,
                                   &out)) != CPK_OK)
        break;
      t = cpk_results_find(r, full); /* the list may have moved */
      const int64_t k = cpk_tensor_numel(t);
      cpk__mul_broadcast(on, out->dtype, 1, k, grad->data, grad->data,
                         out->data);
      cpk__scale(on, out->dtype, k, -1.0 / (double)total, out->data);
      cpk__axpy(on, out->dtype, k, 1.0, t->data, out->data);
      cpk__scale(on, out->dtype, k, 1.0 / (double)total, out->data);
    } else if (p->batch_dot && len > 11 &&
               strcmp(full + len - 11, ".grad_batch") == 0) {
      snprintf(base, sizeof base, "%.*s", (int)(len - 11), full);
      snprintf(name, sizeof name, "%s.batch_dot", base);
      int64_t shape[2] = {total, total};
      if ((rc = cpk__results_alloc(r, name, t->dtype, 2, shape, &out)) !=
          CPK_OK)
        break;
      t = cpk_results_find(r, full);
      const int64_t per = cpk_tensor_numel(t) / total;
      cpk__gemm(on, t->dtype, 0, 1, total, total, per, 1.0, t->data, per,
                t->data, per, 0.0, out->data, total);
    }
  }
  for (int i = cpk_results_count(r) - 1; rc == CPK_OK && i >= 0; i--) {
    snprintf(full, sizeof full, "%s", cpk_results_name(r, i));
    const size_t len = strlen(full);
    if (((p->variance && !p->has_sgs && len > 17 &&
          strcmp(full + len - 17, ".sum_grad_squared") == 0) ||
         (p->batch_dot && !p->has_batch_grad && len > 11 &&
          strcmp(full + len - 11, ".grad_batch") == 0))) {
      snprintf(name, sizeof name, "%s", full);
      cpk__results_drop(r, name);
    }
  }
  return rc;
}

/* Whether a pass that ran out of memory may run again on halves of its
 * batch, giving the same results: not with MPI ranks (each would split on
 * its own), not in training mode (batch norm's statistics and dropout
 * depend on the whole batch), not for kfra (see max_batch), not with
 * per-sample visitors (they need one pass). */
static int splits_on_oom(const cpk_context *ctx, const cpk_pass_spec *spec,
                         const cpk_pass_options *opts) {
  shard_plan plan;
  if (ctx->dist.size > 1 || spec->training ||
      (opts != NULL && (opts->visit_grad_batch != NULL ||
                        opts->visit_grad_factors != NULL)))
    return 0;
  return plan_shards(spec->extensions, &plan) == CPK_OK && !plan.kfra;
}

int cpk_compute_ex(cpk_context *ctx, cpk_model *model,
                   const cpk_pass_spec *spec, const cpk_pass_options *opts,
                   const cpk_tensor *input, const cpk_tensor *target,
                   cpk_results **out) {
  int64_t n = 0, first = 0, total = 0;
  int rc;
  *out = NULL;
  cpk__dist_begin(ctx);
  rc = cpk_check_pass(model, spec, input, target);
  if (rc == CPK_OK)
    n = input->shape[0];
  int64_t step = opts != NULL && opts->max_batch > 0 ? opts->max_batch : n;
  if (rc == CPK_OK && opts != NULL && opts->max_batch < 0)
    rc = cpk__fail(CPK_EINVAL, "max_batch must be positive, got %lld",
                   (long long)opts->max_batch);
  if (rc == CPK_OK && step < n && opts->visit_grad_batch != NULL)
    rc = cpk__fail(CPK_EINVAL, "per-sample gradient visitors need one pass "
                               "over the batch (max_batch = 0)");
  if (ctx->dist.size <= 1 && (rc != CPK_OK || step >= n)) {
    if (rc != CPK_OK)
      return rc;
    rc = one_pass(ctx, model, spec, opts, input, target, out);
    if (rc != CPK_ENOMEM || n == 1 || !splits_on_oom(ctx, spec, opts))
      return rc;
    cpk_clear_error(); /* over the memory: the batch in two halves */
    rc = CPK_OK;
    step = (n + 1) / 2;
  }

  /* Shards: this rank's samples, in passes of at most `step`. */
  shard_plan plan;
  cpk_pass_spec local = *spec;
  cpk_results *acc = NULL, *part = NULL;
  if ((rc = cpk__dist_sizes(ctx, rc, n, &first, &total)) != CPK_OK)
    return rc;
  if ((rc = plan_shards(spec->extensions, &plan)) == CPK_OK && plan.kfra &&
      step < n)
    rc = cpk__fail(CPK_ENOTSUP,
                   "kfra cannot be combined over passes of %lld of %lld "
                   "samples: its recursion averages over the whole batch at "
                   "every layer; compute it in one pass per rank",
                   (long long)step, (long long)n);
  local.extensions = plan.list;
  for (int64_t at = 0; rc == CPK_OK && at < n; at += step) {
    const int64_t count = n - at < step ? n - at : step;
    cpk_tensor xin, tin;
    cpk__rows_view(&xin, input, at, count);
    cpk__rows_view(&tin, target, at, count);
    ctx->shard_first = first + at;
    ctx->shard_total = total;
    rc = one_pass(ctx, model, &local, opts, &xin, &tin, &part);
    ctx->shard_first = ctx->shard_total = 0;
    if (rc == CPK_ENOMEM && count > 1 && splits_on_oom(ctx, spec, opts)) {
      cpk_clear_error(); /* this pass again, and the rest, in halves */
      rc = CPK_OK;
      step = (count + 1) / 2;
      at -= step; /* the loop's step brings it back */
      continue;
    }
    if (rc == CPK_OK)
      rc = accumulate(ctx, &acc, part, at, n);
    cpk_results_free(part);
    part = NULL;
  }
  rc = combine_ranks(ctx, rc, acc);
  if (rc == CPK_OK) {
    const cpk_context *on = keep_on_device(ctx, opts) ? ctx : NULL;
    cpk__results_on(acc, on); /* variance and batch_dot beside the rest */
    rc = finish_shards(on, &plan, total, acc);
    if (rc == CPK_OK)
      rc = cpk__device_sync(on);
    cpk__results_on(acc, NULL);
  }
  rc = cpk__dist_agree(ctx, rc); /* every rank returns the same status */
  if (rc != CPK_OK)
    cpk_results_free(acc);
  else
    *out = acc;
  return rc;
}
