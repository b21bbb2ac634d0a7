/*
 * cmd_spectra.c: `curvpack eigen`, `trace` and `density`: spectra of the
 * Hessian or the GGN of the loss through matrix-free products
 * (cpk_curvature_op) and the spectral tools.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* What the three commands share: the problem, the curvature and the
 * operator over it. */
typedef struct {
  cli_common c;
  cli_setup s;
  const char *curvature, *data_pass;
  cpk_curvature kind;
  int64_t max_batch; /* --data-pass */
  cpk_model *model;
  cpk_tensor *input, *target;
  cpk_context *ctx;
  cpk_curvature_op *op;
  cpk_operator lin;
  cpk_results *res;
} spectra;

static void spectra_free(spectra *sp) {
  cpk_results_free(sp->res);
  cpk_curvature_op_free(sp->op);
  cpk_context_free(sp->ctx);
  cpk_tensor_free(sp->target);
  cpk_tensor_free(sp->input);
  cpk_model_free(sp->model);
}

/* Parse the common options plus `extra`, check them, load the problem. */
static int spectra_open(spectra *sp, const char *command, const char *summary,
                        int argc, char **argv, const cli_opt *extra,
                        int nextra) {
  cli_opt opts[CLI_COMMON_NOPTS + 8];
  memset(sp, 0, sizeof *sp);
  cli_common_opts(&sp->c, opts);
  opts[CLI_COMMON_NOPTS] =
      (cli_opt){"curvature", "C", "hessian (default) or ggn", &sp->curvature,
                NULL};
  opts[CLI_COMMON_NOPTS + 1] = (cli_opt){
      "data-pass", "B",
      "treat --input as a whole data set: every product goes through it "
      "(per MPI rank) in passes of at most B samples, memory for one pass",
      &sp->data_pass, NULL};
  memcpy(opts + CLI_COMMON_NOPTS + 2, extra, (size_t)nextra * sizeof *extra);
  int rc = cli_parse(command, summary, argc, argv, opts,
                     CLI_COMMON_NOPTS + 2 + nextra);
  if (rc != 0)
    return rc < 0 ? -1 : rc;
  if ((rc = cli_require(command, "model", sp->c.model)) ||
      (rc = cli_require(command, "params", sp->c.params)) ||
      (rc = cli_require(command, "input", sp->c.input)) ||
      (rc = cli_require(command, "target", sp->c.target)) ||
      (rc = cli_require(command, "out", sp->c.out)) ||
      (rc = cli_common_setup(&sp->c, &sp->s)))
    return rc;
  if (sp->data_pass &&
      (rc = cli_parse_int("data-pass", sp->data_pass, 1, &sp->max_batch)) != 0)
    return rc;
  sp->kind = CPK_CURV_HESSIAN;
  if (sp->curvature != NULL) {
    if (strcmp(sp->curvature, "ggn") == 0)
      sp->kind = CPK_CURV_GGN;
    else if (strcmp(sp->curvature, "hessian") != 0)
      return cli_error(CPK_EUSAGE,
                       "--curvature: expected hessian or ggn, got '%s'",
                       sp->curvature);
  }
  return 0;
}

/* Load the problem and build the operator (after option checks). */
static int spectra_load(spectra *sp) {
  cpk_pass_spec spec = {sp->s.loss, sp->s.reduction, NULL, 0};
  int rc = cli_load_problem(&sp->c, &sp->s, &sp->model, &sp->input,
                            &sp->target);
  if (rc != 0)
    return rc;
  int st = cli_context_new(&sp->ctx, &sp->s.ctx);
  if ((rc = cli_sync(st == CPK_OK ? 0 : cli_lib_error(st))) != 0)
    return rc;
  st = cpk_curvature_op_new_ex(&sp->op, sp->ctx, sp->model, &spec, sp->input,
                                 sp->target, sp->kind, sp->max_batch);
  if (st == CPK_OK)
    st = cpk_results_new(&sp->res);
  if (st != CPK_OK)
    return cli_lib_fail(sp->ctx, st);
  cpk_curvature_op_as_operator(sp->op, &sp->lin);
  return 0;
}

/* Add a tensor of the run's dtype, filled from doubles, to the results. */
static int add_result(spectra *sp, const char *name, int ndim,
                      const int64_t *shape, const double *values) {
  cpk_tensor *t;
  int st = cpk_tensor_new(&t, sp->s.dtype, ndim, shape);
  for (int64_t i = 0; st == CPK_OK && i < cpk_tensor_numel(t); i++)
    cpk_tensor_set(t, i, values[i]);
  if (st == CPK_OK)
    st = cpk_results_add(sp->res, name, t);
  return st == CPK_OK ? 0 : cli_lib_error(st);
}

/* Tolerance products in float32 can reach. */
static double eigen_tol(const spectra *sp) {
  return sp->s.dtype == CPK_F32 ? 1e-5 : 1e-8;
}

int cmd_eigen(int argc, char **argv) {
  spectra sp;
  const char *top = NULL;
  const cli_opt extra[] = {
      {"top", "K", "number of largest eigenvalues (default 1)", &top, NULL}};
  int rc = spectra_open(&sp, "eigen",
                        "Top eigenvalues and eigenvectors of the Hessian or "
                        "GGN of the loss (Lanczos); writes eigenvalues.npy "
                        "(K,), largest first, and P.eigenvectors.npy (K, *S)",
                        argc, argv, extra, 1);
  int64_t k = 1;
  if (rc == 0 && top && (rc = cli_parse_int("top", top, 1, &k)) == 0 &&
      k > 100000)
    rc = cli_error(CPK_EUSAGE, "--top: at most 100000, got %s", top);
  if (rc != 0 || (rc = spectra_load(&sp)) != 0)
    goto done;
  const int64_t p = sp.lin.dim;
  if (k > p) {
    rc = cli_error(CPK_EINVAL, "--top %lld: the model has only %lld parameters",
                   (long long)k, (long long)p);
    goto done;
  }
  double *vals = malloc((size_t)k * sizeof *vals);
  double *vecs = malloc((size_t)(k * p) * sizeof *vecs);
  cpk_eigen_options o = {.tol = eigen_tol(&sp), .seed = sp.s.ctx.seed};
  int st = vals && vecs ? cpk_eigen_lanczos(&sp.lin, k, &o, vals, vecs, NULL)
                        : CPK_ENOMEM;
  if (st != CPK_OK)
    rc = cli_lib_fail(sp.ctx, st);
  /* An eigenvector's sign is arbitrary: make its largest entry (the first
   * of those within 1e-6 of the largest magnitude) positive, so that runs
   * whose rounding differs (other thread or rank counts) agree. */
  for (int64_t j = 0; rc == 0 && j < k; j++) {
    double *v = vecs + j * p, big = 0.0;
    for (int64_t i = 0; i < p; i++)
      big = fabs(v[i]) > big ? fabs(v[i]) : big;
    for (int64_t i = 0; i < p; i++)
      if (fabs(v[i]) >= big * (1.0 - 1e-6)) {
        if (v[i] < 0.0)
          for (int64_t e = 0; e < p; e++)
            v[e] = -v[e];
        break;
      }
  }
  if (rc == 0)
    rc = add_result(&sp, "eigenvalues", 1, &k, vals);
  /* P.eigenvectors [K, *S]: the slice of every eigenvector over P. */
  int64_t off = 0;
  for (int i = 0; rc == 0 && i < cpk_model_num_params(sp.model); i++) {
    const char *name;
    cpk_tensor *theta;
    char key[96];
    if (!cpk_model_param_trainable(sp.model, i))
      continue;
    cpk_model_param(sp.model, i, &name, &theta);
    const int64_t n = cpk_tensor_numel(theta);
    int64_t shape[CPK_MAX_DIMS + 1] = {k};
    memcpy(shape + 1, theta->shape, (size_t)theta->ndim * sizeof *shape);
    double *part = malloc((size_t)(k * n) * sizeof *part);
    if (part == NULL) {
      rc = cli_error(CPK_ENOMEM, "out of memory for eigenvectors");
      break;
    }
    for (int64_t j = 0; j < k; j++)
      memcpy(part + j * n, vecs + j * p + off, (size_t)n * sizeof *part);
    snprintf(key, sizeof key, "%s.eigenvectors", name);
    rc = add_result(&sp, key, theta->ndim + 1, shape, part);
    free(part);
    off += n;
  }
  free(vals);
  free(vecs);
  if (rc == 0)
    rc = cli_write_results(sp.c.out, sp.res);
done:
  spectra_free(&sp);
  return rc < 0 ? CLI_EXIT_OK : rc;
}

/* The exact trace: the sum of diag_hessian or diag_ggn_exact. */
static int exact_trace(spectra *sp, double *trace) {
  const char *ext = sp->kind == CPK_CURV_HESSIAN ? "diag_hessian"
                                                 : "diag_ggn_exact";
  const char *suffix = sp->kind == CPK_CURV_HESSIAN ? "diag_h"
                                                    : "diag_ggn_exact";
  cpk_pass_spec spec = {sp->s.loss, sp->s.reduction, ext, 0};
  cpk_results *r;
  const cpk_pass_options po = {.max_batch = sp->max_batch};
  int st = cpk_compute_ex(sp->ctx, sp->model, &spec, &po, sp->input,
                          sp->target, &r);
  if (st != CPK_OK)
    return cli_lib_fail(sp->ctx, st);
  *trace = 0.0;
  for (int i = 0; i < cpk_model_num_params(sp->model); i++) {
    const char *name;
    char key[96];
    if (!cpk_model_param_trainable(sp->model, i))
      continue;
    cpk_model_param(sp->model, i, &name, NULL);
    snprintf(key, sizeof key, "%s.%s", name, suffix);
    const cpk_tensor *d = cpk_results_find(r, key);
    for (int64_t j = 0; d && j < cpk_tensor_numel(d); j++)
      *trace += cpk_tensor_get(d, j);
  }
  cpk_results_free(r);
  return 0;
}

int cmd_trace(int argc, char **argv) {
  spectra sp;
  const char *method = NULL, *samples = NULL;
  const cli_opt extra[] = {
      {"method", "M",
       "exact (default: the sum of the diagonal), hutchinson (Rademacher "
       "probes, with a standard error) or hutchpp",
       &method, NULL},
      {"samples", "S", "probes (matrix-vector products) for hutchinson and "
                       "hutchpp (default 100)",
       &samples, NULL}};
  int rc = spectra_open(&sp, "trace",
                        "Trace of the Hessian or GGN of the loss; writes "
                        "trace.npy (0-d) and, with hutchinson and hutchpp, "
                        "trace_stderr.npy",
                        argc, argv, extra, 2);
  int64_t s = 100;
  int mode = 0; /* 0 exact, 1 hutchinson, 2 hutchpp */
  if (rc == 0 && method) {
    if (strcmp(method, "hutchinson") == 0)
      mode = 1;
    else if (strcmp(method, "hutchpp") == 0)
      mode = 2;
    else if (strcmp(method, "exact") != 0)
      rc = cli_error(CPK_EUSAGE,
                     "--method: expected exact, hutchinson or hutchpp, got "
                     "'%s'",
                     method);
  }
  if (rc == 0 && samples && (rc = cli_parse_int("samples", samples, 2, &s)) == 0 &&
      mode == 0)
    rc = cli_error(CPK_EUSAGE, "--samples needs --method hutchinson or hutchpp");
  if (rc != 0 || (rc = spectra_load(&sp)) != 0)
    goto done;
  double trace = 0.0, err = 0.0;
  cpk_trace_options o = {.seed = sp.s.ctx.seed};
  int st = CPK_OK;
  if (mode == 0)
    rc = exact_trace(&sp, &trace);
  else if (mode == 1)
    st = cpk_trace_hutchinson(&sp.lin, s, &o, &trace, &err);
  else
    st = cpk_trace_hutchpp(&sp.lin, s, &o, &trace, &err);
  if (st != CPK_OK)
    rc = cli_lib_fail(sp.ctx, st);
  if (rc == 0)
    rc = add_result(&sp, "trace", 0, NULL, &trace);
  if (rc == 0 && mode != 0)
    rc = add_result(&sp, "trace_stderr", 0, NULL, &err);
  if (rc == 0)
    rc = cli_write_results(sp.c.out, sp.res);
done:
  spectra_free(&sp);
  return rc < 0 ? CLI_EXIT_OK : rc;
}

int cmd_density(int argc, char **argv) {
  spectra sp;
  const char *runs = NULL, *steps = NULL, *grid = NULL;
  const cli_opt extra[] = {
      {"runs", "R", "stochastic Lanczos quadrature runs (default 1)", &runs,
       NULL},
      {"steps", "L", "Lanczos steps per run (default 100)", &steps, NULL},
      {"grid", "G", "grid points (default 10000)", &grid, NULL}};
  int rc = spectra_open(&sp, "density",
                        "Spectral density of the Hessian or GGN of the loss "
                        "by stochastic Lanczos quadrature (PyHessian's "
                        "defaults); writes density.npy (2, G): grid and "
                        "density",
                        argc, argv, extra, 3);
  int64_t r = 1, l = 100, g = 10000;
  if (rc == 0 && runs)
    rc = cli_parse_int("runs", runs, 1, &r);
  if (rc == 0 && steps)
    rc = cli_parse_int("steps", steps, 1, &l);
  if (rc == 0 && grid)
    rc = cli_parse_int("grid", grid, 2, &g);
  if (rc != 0 || (rc = spectra_load(&sp)) != 0)
    goto done;
  if (l > sp.lin.dim)
    l = sp.lin.dim; /* a Krylov space has at most P dimensions */
  double *out = malloc((size_t)(2 * g) * sizeof *out);
  cpk_density_options o = {
      .runs = r, .steps = l, .grid = g, .seed = sp.s.ctx.seed};
  int st = out ? cpk_spectral_density(&sp.lin, &o, out) : CPK_ENOMEM;
  if (st != CPK_OK)
    rc = cli_lib_fail(sp.ctx, st);
  int64_t shape[2] = {2, g};
  if (rc == 0)
    rc = add_result(&sp, "density", 2, shape, out);
  free(out);
  if (rc == 0)
    rc = cli_write_results(sp.c.out, sp.res);
done:
  spectra_free(&sp);
  return rc < 0 ? CLI_EXIT_OK : rc;
}
