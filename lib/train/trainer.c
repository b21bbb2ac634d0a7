/*
 * trainer.c: one training step at a time (cpk_trainer_run_step): the next
 * batch, the pass with the union of what the optimizer, the tracked
 * quantities and the dump need, the update, the quantities, and Cockpit's
 * two-step alpha (its record waits for the next batch).
 *
 * Randomness: epoch e's order is a permutation drawn from (seed, e); step
 * t's passes run with the context seed drawn from (seed, t) (dropout
 * masks, Monte Carlo draws), reset before every pass of the step so that
 * all of them see the same draws. Nothing else is random, so a trainer
 * restored from a checkpoint continues exactly as it would have.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "device_pass.h"
#include "context.h"
#include "engine.h"
#include "train.h"

/* Alpha's start point, kept until the next batch: Cockpit's f, var(l_n),
 * mean and variance of s_n = B g_n . d / ||d||, and t = ||d||. */
typedef struct alpha_start {
  cpk_results *record; /* the step's record, waiting */
  double **dir;        /* the step's update d, per model parameter */
  double f, var_f, df, var_df, t;
} alpha_start;

struct cpk_trainer {
  cpk_context *ctx;
  cpk_model *model;
  cpk_optim *opt;
  const cpk_tensor *images, *labels;
  int64_t n, batch_size, batches;
  uint64_t seed;
  int64_t step, epoch, batch; /* updates made; epoch; batches done in it */
  int64_t *perm;              /* the order of epoch perm_epoch */
  int64_t perm_epoch;
  cpk_tensor *x, *y; /* the batch (first batch_size rows used) */
  double **theta0;   /* per model parameter; NULL for buffers */
  double **buffers;  /* saved running statistics (extra passes) */
  double *losses;    /* [batch_size] per-sample losses */
  double *dots;      /* [batch_size] per-sample projections */
  cpk__sample_grads sg;
  alpha_start alpha; /* alpha.record != NULL: waiting */
};

/* ----------------------------------------------------------- lifecycle */

static void free_vectors(double **v, int n) {
  for (int i = 0; v && i < n; i++)
    cpk__free(v[i]);
  cpk__free(v);
}

void cpk_trainer_free(cpk_trainer *tr) {
  if (tr == NULL)
    return;
  const int np = tr->model->nparams;
  cpk__free(tr->perm);
  cpk_tensor_free(tr->x);
  cpk_tensor_free(tr->y);
  free_vectors(tr->theta0, np);
  free_vectors(tr->buffers, np);
  free_vectors(tr->alpha.dir, np);
  cpk_results_free(tr->alpha.record);
  cpk__free(tr->losses);
  cpk__free(tr->dots);
  cpk__free(tr);
}

/* One double vector per model parameter, of the parameter's size, for the
 * trainable ones (buffers = 0) or the buffers (buffers = 1). */
static int new_vectors(const cpk_model *m, int buffers, double ***out) {
  *out = cpk__calloc((size_t)m->nparams * sizeof **out);
  if (*out == NULL)
    return CPK_ENOMEM;
  for (int i = 0; i < m->nparams; i++) {
    const cpk__param *p = cpk__train_param(m, i);
    if (p->trainable == buffers)
      continue;
    (*out)[i] =
        cpk__malloc((size_t)cpk_tensor_numel(p->value) * sizeof(double));
    if ((*out)[i] == NULL)
      return CPK_ENOMEM;
  }
  return CPK_OK;
}

/* Copy the parameters (or buffers) into / out of per-parameter vectors. */
static void snapshot(const cpk_model *m, double **v) {
  for (int i = 0; i < m->nparams; i++)
    if (v[i] != NULL)
      cpk__train_to_double(cpk__train_param(m, i)->value, v[i]);
}
static void restore(cpk_model *m, double *const *v) {
  cpk_model_params_changed(m);
  for (int i = 0; i < m->nparams; i++) {
    cpk_tensor *t = cpk__train_param(m, i)->value;
    for (int64_t k = 0; v[i] != NULL && k < cpk_tensor_numel(t); k++)
      cpk_tensor_set(t, k, v[i][k]);
  }
}

int cpk_trainer_new(cpk_trainer **out, cpk_context *ctx, cpk_model *model,
                    cpk_optim *opt, const cpk_tensor *images,
                    const cpk_tensor *labels, int64_t batch_size,
                    uint64_t seed) {
  int rc, ndim;
  int64_t oshape[CPK_MAX_DIMS], shape[CPK_MAX_DIMS];
  *out = NULL;
  if ((rc = cpk__host_only(ctx, "training")) != CPK_OK)
    return rc;
  if ((rc = cpk__check_input(model, images)) != CPK_OK)
    return cpk__fail_prefix(rc, "training images");
  if (images->dtype != model->dtype)
    return cpk__fail(CPK_EINVAL, "training images: %s, the model is %s",
                     cpk_dtype_name(images->dtype),
                     cpk_dtype_name(model->dtype));
  const int64_t n = images->shape[0];
  if (labels->ndim != 1 || labels->shape[0] != n ||
      cpk__is_float(labels->dtype))
    return cpk__fail(CPK_ESHAPE,
                     "training labels: expected %lld class indices, found a "
                     "%s tensor of %d axes",
                     (long long)n, cpk_dtype_name(labels->dtype), labels->ndim);
  if (batch_size < 1)
    return cpk__fail(CPK_EINVAL, "batch size must be >= 1, got %lld",
                     (long long)batch_size);
  if ((rc = cpk_model_output_shape(model, &ndim, oshape)) != CPK_OK)
    return rc;
  if (ndim != 1)
    return cpk__fail(CPK_ESHAPE,
                     "%s: training needs one vector of class scores per "
                     "sample, the model gives %d axes",
                     model->source, ndim);
  cpk_trainer *tr = cpk__calloc(sizeof *tr);
  if (tr == NULL)
    return CPK_ENOMEM;
  tr->ctx = ctx;
  tr->model = model;
  tr->opt = opt;
  tr->images = images;
  tr->labels = labels;
  tr->n = n;
  tr->batch_size = batch_size < n ? batch_size : n;
  tr->batches = (n + tr->batch_size - 1) / tr->batch_size;
  tr->seed = seed;
  tr->perm_epoch = -1;
  memcpy(shape, images->shape, (size_t)images->ndim * sizeof *shape);
  shape[0] = tr->batch_size;
  CPK__TRY(rc, cpk_tensor_new(&tr->x, model->dtype, images->ndim, shape), fail);
  CPK__TRY(rc, cpk_tensor_new(&tr->y, CPK_I64, 1, shape), fail);
  CPK__TRY(rc, new_vectors(model, 0, &tr->theta0), fail);
  CPK__TRY(rc, new_vectors(model, 1, &tr->buffers), fail);
  CPK__TRY(rc, new_vectors(model, 0, &tr->alpha.dir), fail);
  tr->perm = cpk__malloc((size_t)n * sizeof *tr->perm);
  tr->losses = cpk__malloc((size_t)tr->batch_size * sizeof *tr->losses);
  tr->dots = cpk__malloc((size_t)tr->batch_size * sizeof *tr->dots);
  if (!tr->perm || !tr->losses || !tr->dots) {
    rc = CPK_ENOMEM;
    goto fail;
  }
  snapshot(model, tr->theta0);
  tr->sg.model = model;
  tr->sg.ctx = ctx;
  *out = tr;
  return CPK_OK;
fail:
  cpk_trainer_free(tr);
  return rc;
}

int64_t cpk_trainer_step(const cpk_trainer *tr) { return tr->step; }
int64_t cpk_trainer_epoch(const cpk_trainer *tr) { return tr->epoch; }
int64_t cpk_trainer_batch(const cpk_trainer *tr) { return tr->batch; }
int64_t cpk_trainer_batches(const cpk_trainer *tr) { return tr->batches; }

void cpk_step_report_clear(cpk_step_report *r) {
  cpk_results_free(r->records[0]);
  cpk_results_free(r->records[1]);
  cpk_results_free(r->dump);
  memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------ the batch */

/* A 64-bit value drawn from (seed, stream, index). */
static uint64_t derive(uint64_t seed, uint64_t stream, int64_t index) {
  cpk__rng r;
  cpk__rng_seed(&r, seed ^ (stream * 0x9e3779b97f4a7c15ULL) ^
                        ((uint64_t)index * 0xd1b54a32d192ed03ULL));
  return cpk__rng_next(&r);
}

/* Fisher-Yates over the samples, from (seed, epoch). */
static void draw_order(cpk_trainer *tr) {
  cpk__rng r;
  cpk__rng_seed(&r, derive(tr->seed, 1, tr->epoch));
  for (int64_t i = 0; i < tr->n; i++)
    tr->perm[i] = i;
  for (int64_t i = tr->n - 1; i > 0; i--) {
    int64_t j = (int64_t)(cpk__rng_uniform(&r) * (double)(i + 1));
    int64_t t = tr->perm[i];
    tr->perm[i] = tr->perm[j];
    tr->perm[j] = t;
  }
  tr->perm_epoch = tr->epoch;
}

/* Gather batch tr->batch of the epoch into x, y; returns its size. */
static int64_t gather(cpk_trainer *tr) {
  if (tr->perm_epoch != tr->epoch)
    draw_order(tr);
  const int64_t first = tr->batch * tr->batch_size;
  const int64_t count =
      tr->n - first < tr->batch_size ? tr->n - first : tr->batch_size;
  const int64_t per = cpk_tensor_numel(tr->images) / tr->n;
  const size_t es = cpk_dtype_size(tr->images->dtype);
  for (int64_t r = 0; r < count; r++) {
    const int64_t s = tr->perm[first + r];
    memcpy((char *)tr->x->data + (size_t)(r * per) * es,
           (const char *)tr->images->data + (size_t)(s * per) * es,
           (size_t)per * es);
    ((int64_t *)tr->y->data)[r] = (int64_t)cpk_tensor_get(tr->labels, s);
  }
  tr->x->shape[0] = count;
  tr->y->shape[0] = count;
  return count;
}

/* The step's draws, the same for every pass of the step. */
static void seed_step(cpk_trainer *tr) {
  tr->ctx->seed = derive(tr->seed, 2, tr->step);
  cpk__rng_seed(&tr->ctx->rng, tr->ctx->seed);
}

/* ----------------------------------------------------------- the passes */

/* With MPI ranks, each computes on its rows of the batch (rank r gets
 * count / K rows, one more when r < count % K, after the lower ranks'),
 * and the passes combine them into the whole batch's results. */
static int shard(const cpk_trainer *tr, cpk_tensor *x, cpk_tensor *y) {
  const int64_t count = tr->x->shape[0], k = tr->ctx->dist.size;
  const int64_t r = tr->ctx->dist.rank, base = count / k, extra = count % k;
  const int64_t first = r * base + (r < extra ? r : extra);
  const int64_t rows = base + (r < extra);
  if (count < k)
    return cpk__fail(CPK_ESHAPE,
                     "step %lld: a batch of %lld samples cannot be split over "
                     "%lld MPI ranks (every rank needs one): choose a batch "
                     "size (and data set size) for which every batch has at "
                     "least %lld samples",
                     (long long)tr->step, (long long)count, (long long)k,
                     (long long)k);
  const int64_t per = cpk_tensor_numel(tr->x) / count;
  cpk__tensor_view(x, tr->x->dtype,
                   (char *)tr->x->data +
                       (size_t)(first * per) * cpk_dtype_size(tr->x->dtype),
                   tr->x->ndim, tr->x->shape);
  x->shape[0] = rows;
  cpk__tensor_contiguous_strides(x);
  cpk__tensor_view(y, tr->y->dtype, (int64_t *)tr->y->data + first, 1, &rows);
  return CPK_OK;
}

/* A pass at the current parameters in training mode. */
static int pass(cpk_trainer *tr, const char *ext, int visit,
                cpk_results **res) {
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, ext,
                              1};
  const cpk_pass_options opts = {
      .skip_unsupported = 1,
      .visit_grad_batch = visit ? cpk__sample_grads_visit : NULL,
      .visit_grad_factors = visit ? cpk__sample_grads_visit_factors : NULL,
      .visit_ud = &tr->sg};
  cpk_tensor x, y;
  int rc = shard(tr, &x, &y);
  if (rc != CPK_OK)
    return rc;
  seed_step(tr);
  cpk__sample_grads_reset(&tr->sg);
  rc = cpk_compute_ex(tr->ctx, tr->model, &spec, &opts, &x, &y, res);
  if (visit && tr->ctx->dist.size > 1) {
    /* each rank saw its own samples: histogram counts and projections
     * (zero at the other ranks' samples) add up */
    rc = cpk__dist_sum(tr->ctx, rc, CPK_F64, tr->sg.h1, CPK__HIST1D_BINS);
    rc = cpk__dist_sum(tr->ctx, rc, CPK_F64, tr->sg.h2,
                       CPK__HIST2D_X * CPK__HIST2D_Y);
    rc = cpk__dist_sum(tr->ctx, rc, CPK_F64, tr->sg.dots, tr->x->shape[0]);
    if (rc != CPK_OK) {
      cpk_results_free(*res);
      *res = NULL;
    }
  }
  return rc;
}

/* The top Hessian eigenvalue at the current batch (Cockpit's HessMaxEV:
 * power iteration to relative 1e-3; here Lanczos to the same tolerance).
 * A layer without the products gives NaN and the reason in rep. */
static int top_eigenvalue(cpk_trainer *tr, cpk_step_report *rep,
                          double *value) {
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              1};
  cpk_curvature_op *op = NULL;
  cpk_operator lin;
  cpk_eigen_options o = {.max_iter = 40,
                         .tol = 1e-3,
                         .seed = derive(tr->seed, 3, tr->step),
                         .no_restart_check = 1};
  cpk_tensor x, y;
  int rc = shard(tr, &x, &y);
  seed_step(tr);
  if (rc == CPK_OK)
    rc = cpk_curvature_op_new(&op, tr->ctx, tr->model, &spec, &x, &y,
                              CPK_CURV_HESSIAN);
  if (rc == CPK_OK) {
    cpk_curvature_op_as_operator(op, &lin);
    rc = cpk_eigen_lanczos(&lin, 1, &o, value, NULL, NULL);
  }
  cpk_curvature_op_free(op);
  if (rc == CPK_ENOTSUP) {
    rep->unavailable |= CPK_Q_HESS_MAX_EV;
    snprintf(rep->unavailable_why, sizeof rep->unavailable_why, "%s",
             cpk_last_error());
    cpk_clear_error();
    *value = NAN;
    rc = CPK_OK;
  }
  return rc;
}

/* Cockpit's projections s_n = B g_n . d / ||d|| from tr->dots: mean and
 * unbiased variance. */
static void projections(cpk_trainer *tr, int64_t count, double t, double *mean,
                        double *var) {
  for (int64_t i = 0; i < count; i++)
    tr->dots[i] *= (double)count / t;
  cpk__mean_var(tr->dots, count, mean, var);
}

/* Finish the waiting alpha record with the end point (this batch at the
 * parameters after its update; dots hold g_n . d). */
static int finish_alpha(cpk_trainer *tr, int64_t count, double loss,
                        cpk_results **done) {
  alpha_start *a = &tr->alpha;
  double f[2] = {a->f, loss}, var_f[2] = {a->var_f, 0};
  double df[2] = {a->df, 0}, var_df[2] = {a->var_df, 0}, mean_l;
  cpk__mean_var(tr->losses, count, &mean_l, &var_f[1]);
  projections(tr, count, a->t, &df[1], &var_df[1]);
  int rc = cpk__track_put(a->record, "alpha",
                          cpk__alpha(a->t, f, df, var_f, var_df));
  *done = a->record;
  a->record = NULL;
  return rc;
}

/* Alpha's start point: a second pass at the same parameters and draws
 * projects the per-sample gradients on the update d just prepared. */
static int start_alpha(cpk_trainer *tr, int64_t count, double loss,
                       cpk_results *record) {
  alpha_start *a = &tr->alpha;
  const cpk_model *m = tr->model;
  cpk_results *res = NULL;
  double mean_l, t2 = 0.0;
  for (int i = 0; i < m->nparams; i++) {
    if (a->dir[i] == NULL)
      continue;
    const double *d = cpk_optim_update(tr->opt, i);
    const int64_t n = cpk_tensor_numel(cpk__train_param(m, i)->value);
    memcpy(a->dir[i], d, (size_t)n * sizeof *d);
    for (int64_t k = 0; k < n; k++)
      t2 += d[k] * d[k];
  }
  a->t = sqrt(t2);
  a->f = loss;
  cpk__mean_var(tr->losses, count, &mean_l, &a->var_f);
  tr->sg.hist1d = tr->sg.hist2d = 0;
  tr->sg.dir = (const double *const *)a->dir;
  int rc = pass(tr, NULL, 1, &res);
  cpk_results_free(res);
  if (rc != CPK_OK)
    return rc;
  projections(tr, count, a->t, &a->df, &a->var_df);
  a->record = record;
  return CPK_OK;
}

/* Hand the pass results over as the dump, with the batch and the
 * parameters before the update. */
static int make_dump(cpk_trainer *tr, cpk_results *res, cpk_results **dump) {
  cpk_tensor *t;
  int rc = CPK_OK;
  *dump = res;
  if ((rc = cpk_tensor_convert(&t, tr->x, tr->x->dtype)) != CPK_OK ||
      (rc = cpk_results_add(res, "input", t)) != CPK_OK)
    return rc;
  if ((rc = cpk_tensor_convert(&t, tr->y, CPK_I64)) != CPK_OK ||
      (rc = cpk_results_add(res, "target", t)) != CPK_OK)
    return rc;
  for (int i = 0; rc == CPK_OK && i < tr->model->nparams; i++) {
    const cpk__param *p = cpk__train_param(tr->model, i);
    if (p->trainable &&
        (rc = cpk_tensor_convert(&t, p->value, p->value->dtype)) == CPK_OK)
      rc = cpk_results_add(res, tr->model->params[i].name, t);
  }
  return rc;
}

int cpk_trainer_run_step(cpk_trainer *tr, const cpk_step_request *req,
                         cpk_step_report *rep) {
  const unsigned q = req->track;
  cpk_results *res = NULL, *record = NULL;
  char ext[512], track_ext[128];
  int nrec = 0, rc;
  memset(rep, 0, sizeof *rep);
  const int64_t count = gather(tr);
  const int ending = tr->alpha.record != NULL;
  CPK__TRY(rc, cpk_track_extensions(q, track_ext, sizeof track_ext), fail);
  snprintf(ext, sizeof ext, "%s,%s,%s", cpk_optim_extensions(tr->opt),
           track_ext, req->dump_ext ? req->dump_ext : "");
  /* The main pass: the update's gradient and every extension asked for;
   * the histograms, and alpha's end projections, from its per-sample
   * gradients. */
  tr->sg.batch = count;
  tr->sg.dots = tr->dots;
  tr->sg.hist1d = (q & CPK_Q_GRAD_HIST_1D) != 0;
  tr->sg.hist2d = (q & CPK_Q_GRAD_HIST_2D) != 0;
  tr->sg.dir = ending ? (const double *const *)tr->alpha.dir : NULL;
  CPK__TRY(rc, pass(tr, ext, tr->sg.hist1d || tr->sg.hist2d || ending, &res),
           fail);
  const cpk_tensor *loss = cpk_results_find(res, "loss");
  int64_t correct;
  rep->loss = cpk_tensor_get(loss, 0);
  rep->samples = count;
  if (!isfinite(rep->loss)) {
    rc = cpk__fail(CPK_ENONFINITE,
                   "step %lld: the loss is %g: the training diverged (lower "
                   "the learning rate, or raise the damping)",
                   (long long)tr->step, rep->loss);
    goto fail;
  }
  CPK__TRY(rc,
           cpk__ce_per_sample(cpk_results_find(res, "output"), tr->y,
                              tr->losses, &correct),
           fail);
  if (ending)
    CPK__TRY(rc, finish_alpha(tr, count, rep->loss, &rep->records[nrec++]),
             fail);
  /* Extra passes must not move the running statistics again. */
  snapshot(tr->model, tr->buffers);
  double top = NAN;
  if (q & CPK_Q_HESS_MAX_EV)
    CPK__TRY(rc, top_eigenvalue(tr, rep, &top), fail);
  CPK__TRY(rc, cpk_optim_prepare(tr->opt, tr->model, res), fail);
  if (q != 0) {
    const cpk__track_inputs in = {
        q, tr->model, res, count, correct, tr->theta0, tr->opt, &tr->sg, top};
    CPK__TRY(rc, cpk_results_new(&record), fail);
    CPK__TRY(rc, cpk__track_put(record, "step", (double)tr->step), fail);
    CPK__TRY(rc, cpk__track_put(record, "epoch", (double)tr->epoch), fail);
    CPK__TRY(rc, cpk__track_fill(record, &in), fail);
  }
  if (q & CPK_Q_ALPHA) {
    CPK__TRY(rc, start_alpha(tr, count, rep->loss, record), fail);
    record = NULL; /* waits in tr->alpha */
  } else if (record != NULL) {
    rep->records[nrec++] = record;
    record = NULL;
  }
  restore(tr->model, tr->buffers);
  if (req->dump_ext != NULL) {
    CPK__TRY(rc, make_dump(tr, res, &rep->dump), fail);
    res = NULL;
  }
  CPK__TRY(rc, cpk_optim_apply(tr->opt, tr->model), fail);
  cpk_results_free(res);
  tr->step++;
  if (++tr->batch == tr->batches) {
    tr->batch = 0;
    tr->epoch++;
  }
  return CPK_OK;
fail:
  cpk_results_free(res);
  cpk_results_free(record);
  cpk_step_report_clear(rep);
  return rc;
}

int cpk_trainer_flush(cpk_trainer *tr, cpk_results **record) {
  *record = tr->alpha.record;
  tr->alpha.record = NULL;
  return *record ? cpk__track_put(*record, "alpha", NAN) : CPK_OK;
}

/* ---------------------------------------------------------- checkpoints */

static int make_dir(const char *path) {
  if (mkdir(path, 0777) != 0 && errno != EEXIST)
    return cpk__fail(CPK_EIO, "cannot create directory '%s': %s", path,
                     strerror(errno));
  return CPK_OK;
}

/* DIR/trainer.npy: int64 [step, epoch, batch, seed, batch_size, n]. */
#define STATE_LEN 6

int cpk_trainer_save(const cpk_trainer *tr, const char *dir) {
  char path[PATH_MAX];
  int64_t state[STATE_LEN] = {tr->step,          tr->epoch,      tr->batch,
                              (int64_t)tr->seed, tr->batch_size, tr->n};
  int64_t len = STATE_LEN;
  cpk_tensor view;
  int rc;
  if (tr->alpha.record != NULL)
    return cpk__fail(CPK_EINVAL, "trainer: a record waits for alpha; flush "
                                 "it before saving");
  if ((rc = cpk_model_save_params(tr->model, dir)) != CPK_OK)
    return rc;
  snprintf(path, sizeof path, "%s/init", dir);
  if ((rc = make_dir(path)) != CPK_OK)
    return rc;
  for (int i = 0; rc == CPK_OK && i < tr->model->nparams; i++) {
    const cpk__param *p = cpk__train_param(tr->model, i);
    if (tr->theta0[i] == NULL)
      continue;
    snprintf(path, sizeof path, "%s/init/%s.npy", dir,
             tr->model->params[i].name);
    cpk__tensor_view(&view, CPK_F64, tr->theta0[i], p->ndim, p->shape);
    rc = cpk_npy_write(path, &view);
  }
  snprintf(path, sizeof path, "%s/optimizer", dir);
  if (rc == CPK_OK && (rc = make_dir(path)) == CPK_OK)
    rc = cpk_optim_save(tr->opt, path);
  snprintf(path, sizeof path, "%s/trainer.npy", dir);
  cpk__tensor_view(&view, CPK_I64, state, 1, &len);
  return rc == CPK_OK ? cpk_npy_write(path, &view) : rc;
}

int cpk_trainer_load(cpk_trainer *tr, const char *dir) {
  char path[PATH_MAX];
  cpk_tensor *t = NULL;
  int64_t s[STATE_LEN];
  int rc;
  snprintf(path, sizeof path, "%s/trainer.npy", dir);
  if ((rc = cpk_npy_read(path, &t)) != CPK_OK)
    return rc;
  if (cpk_tensor_numel(t) != STATE_LEN || cpk__is_float(t->dtype))
    rc = cpk__fail(CPK_EFORMAT, "%s: expected %d integers", path, STATE_LEN);
  for (int i = 0; rc == CPK_OK && i < STATE_LEN; i++)
    s[i] = (int64_t)cpk_tensor_get(t, i);
  cpk_tensor_free(t);
  if (rc != CPK_OK)
    return rc;
  if ((uint64_t)s[3] != tr->seed || s[4] != tr->batch_size || s[5] != tr->n)
    return cpk__fail(CPK_EINVAL,
                     "%s: saved with seed %llu, batch size %lld and %lld "
                     "samples; this run has %llu, %lld and %lld",
                     path, (unsigned long long)s[3], (long long)s[4],
                     (long long)s[5], (unsigned long long)tr->seed,
                     (long long)tr->batch_size, (long long)tr->n);
  if ((rc = cpk_model_load_params(tr->model, dir)) != CPK_OK)
    return rc;
  for (int i = 0; rc == CPK_OK && i < tr->model->nparams; i++) {
    if (tr->theta0[i] == NULL)
      continue;
    snprintf(path, sizeof path, "%s/init/%s.npy", dir,
             tr->model->params[i].name);
    if ((rc = cpk_npy_read(path, &t)) != CPK_OK)
      break;
    if (cpk_tensor_numel(t) !=
        cpk_tensor_numel(cpk__train_param(tr->model, i)->value))
      rc = cpk__fail(CPK_ESHAPE, "%s: wrong number of elements", path);
    else
      cpk__train_to_double(t, tr->theta0[i]);
    cpk_tensor_free(t);
  }
  snprintf(path, sizeof path, "%s/optimizer", dir);
  if (rc == CPK_OK && (rc = cpk_optim_load(tr->opt, path)) == CPK_OK) {
    tr->step = s[0];
    tr->epoch = s[1];
    tr->batch = s[2];
    tr->perm_epoch = -1;
    cpk_results_free(tr->alpha.record);
    tr->alpha.record = NULL;
  }
  return rc;
}
