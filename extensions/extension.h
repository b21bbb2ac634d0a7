/*
 * extension.h: the extensions of `curvpack compute --ext` (one file each in
 * extensions/, listed in ext_registry.c). An extension is a small table of
 * handlers the engine calls during the backward pass. First-order
 * extensions work at each parameter from the layer's input x and the
 * gradient g = dL/dy flowing into the layer's output (g carries the loss
 * scale c, so per-sample gradients sum to the gradient).
 *
 * Intermediates several extensions need (per-sample gradients, the second
 * moment) are computed once per parameter through the cpk__site_* helpers.
 */
#ifndef CPK_EXTENSION_H
#define CPK_EXTENSION_H

#include "internal.h"
#include "layer.h"

typedef struct cpk__hterms cpk__hterms;

/* What the engine knows at one trainable parameter during backward. */
typedef struct cpk__param_site {
  cpk_context *ctx;
  cpk__layer *layer;
  int p;                  /* slot in layer->params */
  const char *name;       /* "1.weight" */
  int64_t n;              /* batch size (of this pass) */
  /* Size of the whole batch means run over (Kronecker input factors): n,
   * or more when the pass is a shard of a batch split over MPI ranks or
   * over passes (context.h). */
  int64_t n_mean;
  const cpk_tensor *x;    /* layer input [N, *in] */
  const cpk_tensor *g;    /* dL/dy as a block [1, N, *out] */
  const cpk_tensor *grad; /* the summed gradient, shape S */
  /* Square roots of the loss Hessian backpropagated to this layer's output,
   * [V, N, *out] (NULL unless an extension needs them): exact (V = C) and
   * Monte Carlo (V = M). sum_v J^T S_v S_v^T J is the GGN. */
  const cpk_tensor *sqrt_exact, *sqrt_mc;
  /* The loss Hessian at the layer output as terms (diag_hessian), and
   * KFRA's averaged GGN [D_out, D_out]; NULL unless needed. */
  cpk__hterms *hterms;
  const cpk_tensor *kfra;
  cpk_results *results;   /* where extensions add their outputs */
  /* The pass's options (NULL: none): their visitors, if set, see the
   * per-sample gradients. */
  const cpk_pass_options *visit_opts;
  /* Cached intermediates (owned by the site, freed after the parameter). */
  cpk_tensor *grad_batch;       /* [N, *S], or NULL until needed */
  int grad_batch_in_results;    /* grad_batch is owned by results */
  cpk_tensor *sum_grad_squared; /* S, or NULL until needed */
  int sum_grad_squared_in_results; /* sum_grad_squared owned by results */
} cpk__param_site;

/* What an extension needs the engine to backpropagate besides g. */
enum {
  CPK__NEED_SQRT_EXACT = 1, /* the exact square root of the loss Hessian */
  CPK__NEED_SQRT_MC = 2,    /* its Monte Carlo estimate */
  CPK__NEED_HESSIAN_TERMS = 4, /* the exact Hessian as terms */
  CPK__NEED_KFRA = 8,       /* KFRA's averaged GGN matrix */
  /* All per-sample gradients at once (batch_grad): where they are formed by
   * per-sample products anyway, the gradient is their sum instead of one
   * more product (every parameter but a dense linear layer's). */
  CPK__NEED_GRAD_BATCH = 16,
  /* The exact root in the contract's form, not just any factor with its
   * outer products (sqrt_ggn_exact hands it out). */
  CPK__NEED_SQRT_CONTRACT = 32,
  /* Walks the per-sample gradients (in chunks) where no closed form
   * exists: when one chunk holds the whole batch anyway, they are formed
   * once, serve every such extension, and sum to the gradient. */
  CPK__NEED_PER_SAMPLE = 64
};

typedef struct cpk__extension {
  const char *name;
  unsigned needs; /* CPK__NEED_* flags */
  /* Compute this extension's outputs for one parameter. */
  int (*param)(cpk__param_site *site);
} cpk__extension;

/* The contract's extension names and this build's implementations. */
typedef struct cpk__extension_entry {
  const char *name;
  const cpk__extension *impl; /* NULL: known, not implemented yet */
} cpk__extension_entry;

#define CPK__MAX_EXTENSIONS 24

/* Parse a comma-separated list into registry entries (duplicates dropped),
 * in the registry's order. CPK_EUSAGE for an unknown name, CPK_ENOTSUP for
 * one not implemented. */
int cpk__extensions_parse(const char *list, const cpk__extension_entry **out,
                          int *count);

/* Release the site's cached intermediates. */
void cpk__site_release(cpk__param_site *s);

/* Allocate a result "NAME.SUFFIX" (e.g. "1.weight.batch_l2") of the given
 * shape in the model's dtype; *t is owned by the results. */
int cpk__site_result(cpk__param_site *s, const char *suffix, int ndim,
                     const int64_t *shape, cpk_tensor **t);
/* Hand a cached intermediate of the site (grad_batch, sum_grad_squared) to
 * the results as "NAME.SUFFIX"; the site keeps reading it and *owned tells
 * its release not to free it. On failure it is freed and *cached NULL. */
int cpk__site_result_take(cpk__param_site *s, const char *suffix,
                          cpk_tensor **cached, int *owned);
/* Same, not zeroed: for a caller that writes every element. */
int cpk__site_result_uninit(cpk__param_site *s, const char *suffix, int ndim,
                            const int64_t *shape, cpk_tensor **t);
/* Same with the shape (lead, *S), lead < 0 meaning S alone. */
int cpk__site_result_like(cpk__param_site *s, const char *suffix,
                          int64_t lead, cpk_tensor **t);
/* Same, not zeroed: for a caller that writes every element. */
int cpk__site_result_like_uninit(cpk__param_site *s, const char *suffix,
                                 int64_t lead, cpk_tensor **t);

/* The per-sample gradients [N, *S] (materialised once per parameter). */
int cpk__site_grad_batch(cpk__param_site *s, const cpk_tensor **out);

/* Visit the per-sample gradients in chunks of consecutive samples, so that
 * memory stays bounded whatever N: fn gets the first sample and a tensor
 * [count, *S]. Uses the materialised gradients when they exist. */
typedef int (*cpk__chunk_fn)(void *ud, int64_t first, const cpk_tensor *chunk);
int cpk__site_foreach_chunk(cpk__param_site *s, cpk__chunk_fn fn, void *ud);

/* A linear layer on [N, IN] inputs (no extra leading axes): the cases with
 * rank-one per-sample gradients g_n x_n^T and cheap closed forms. */
int cpk__site_is_dense_linear(const cpk__param_site *s);

/* sum_n grad_batch[n]^2, shape S (cached). */
int cpk__site_sum_grad_squared(cpk__param_site *s, const cpk_tensor **out);

/* J_theta^T of a block for samples [first, first + count): in is a block
 * [V, N, *out] at the layer output, out [V, count, *S] per sample. */
int cpk__site_block_param_jac(cpk__param_site *s, const cpk_tensor *in,
                              int64_t first, int64_t count, cpk_tensor *out);
/* Samples per chunk so that a [V, count, *S] block fits ctx->work_bytes. */
int64_t cpk__site_chunk_samples(const cpk__param_site *s, int64_t v);

/* The extensions, one file each (a family shares one file). */
extern const cpk__extension cpk__batch_grad_ext, cpk__batch_l2_grad_ext,
    cpk__sum_grad_squared_ext, cpk__variance_ext, cpk__batch_dot_grad_ext;
extern const cpk__extension cpk__diag_ggn_exact_ext, cpk__diag_ggn_mc_ext,
    cpk__batch_diag_ggn_exact_ext, cpk__batch_diag_ggn_mc_ext;
extern const cpk__extension cpk__sqrt_ggn_exact_ext, cpk__sqrt_ggn_mc_ext;
extern const cpk__extension cpk__kfac_ext, cpk__kflr_ext, cpk__kfra_ext;
extern const cpk__extension cpk__diag_hessian_ext, cpk__batch_diag_hessian_ext;

/* KFRA's matrix: at the loss Gbar = c sum_n d^2 l_n / d f_n^2 from the exact
 * square root S [V, N, *out] (Gbar = S_flat^T S_flat); through a layer
 * Gbar <- (1/N) sum_n J_n^T Gbar J_n (the layer's ea_jac_t_mat_jac). */
int cpk__kfra_start(cpk_context *ctx, const cpk_tensor *sqrt_exact,
                    cpk_tensor **gbar);
int cpk__kfra_through(cpk_tensor **gbar, cpk__layer *l, cpk_context *ctx,
                      const cpk_tensor *x, const cpk_tensor *y);

#endif
