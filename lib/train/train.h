/* train.h: helpers shared by the training files of lib/train/ (private). */
#ifndef CPK_TRAIN_H
#define CPK_TRAIN_H

#include "model.h"

/* dst[i] := t[i] as double, for a float tensor of n elements. */
void cpk__train_to_double(const cpk_tensor *t, double *dst);
/* The result "PARAM.SUFFIX", or NULL. */
const cpk_tensor *cpk__train_find(const cpk_results *r, const char *param,
                                  const char *suffix);
/* Like cpk__train_find, but a missing or misshapen result (numel != n) is
 * a CPK_EINVAL naming it, one in device memory a CPK_EUSAGE. */
int cpk__train_need(const cpk_results *r, const char *param, const char *suffix,
                    int64_t n, const cpk_tensor **out);
/* The model's parameter slot i (value, trainable flag). */
const cpk__param *cpk__train_param(const cpk_model *m, int i);

/* ------------------------------------------------ per-sample gradients
 * What the trainer gathers from the per-sample gradients while a pass runs
 * (cpk_pass_options' visitors): Cockpit's gradient histograms, and the
 * projections of the per-sample gradients on a direction (alpha). They
 * hold g_n = grad l_n / B (mean reduction), so B g_n = grad l_n. */
#define CPK__HIST1D_BINS 100
#define CPK__HIST2D_X 40
#define CPK__HIST2D_Y 50

typedef struct cpk__sample_grads {
  const cpk_model *model;
  cpk_context *ctx;   /* for the GEMM of factored projections */
  int64_t batch;      /* B */
  int hist1d, hist2d; /* gather the histograms */
  /* hist1d: B g_n clamped to [-2, 2], 100 bins (torch.histc);
   * hist2d [40, 50]: B g_n clamped to (-1, 1) and the parameter value to
   * (-2, 2), each clamped to its outer bin centres */
  double h1[CPK__HIST1D_BINS];
  double h2[CPK__HIST2D_X * CPK__HIST2D_Y];
  /* dir[i] (per model parameter, NULL to skip): dots[n] += g_n . dir */
  const double *const *dir;
  double *dots; /* [B] */
} cpk__sample_grads;

/* Reset the sums (histograms, dots). */
void cpk__sample_grads_reset(cpk__sample_grads *sg);
/* The visitors (ud = the cpk__sample_grads): chunks of per-sample
 * gradients, and Linear weights' in factored form. */
int cpk__sample_grads_visit(void *ud, const char *param, int64_t first,
                            const cpk_tensor *chunk);
int cpk__sample_grads_visit_factors(void *ud, const char *param,
                                    const cpk_tensor *u, const cpk_tensor *x);

/* --------------------------------------------------------------- losses */
/* Per-sample cross-entropy of logits [B, C] against class indices [B]:
 * l_n = logsumexp(f_n) - f_n[y_n]; *correct counts argmax f_n == y_n
 * (first maximum). CPK_ERANGE for a class index outside [0, C). losses
 * may be NULL. */
int cpk__ce_per_sample(const cpk_tensor *logits, const cpk_tensor *labels,
                       double *losses, int64_t *correct);

/* ----------------------------------------------------------- quantities */
/* What the quantities of one tracked step are computed from. */
typedef struct cpk__track_inputs {
  unsigned q;                  /* CPK_Q_* */
  const cpk_model *model;      /* at theta_t, before the update */
  const cpk_results *res;      /* the step's pass */
  int64_t batch;               /* B */
  int64_t correct;             /* argmax hits in the batch */
  double *const *theta0;       /* per model parameter (NULL: buffer) */
  const cpk_optim *opt;        /* its prepared update d */
  const cpk__sample_grads *sg; /* the histograms */
  double hess_max_ev;          /* NaN when unavailable */
} cpk__track_inputs;

/* Add every quantity of in->q (but alpha) to rec as float64 tensors. */
int cpk__track_fill(cpk_results *rec, const cpk__track_inputs *in);
/* Add a 0-d float64 tensor `name` = v. */
int cpk__track_put(cpk_results *rec, const char *name, double v);

/* Cockpit's alpha from the noise-aware quadratic fit through (0, f[0],
 * df[0]) and (t, f[1], df[1]) with variances var_f, var_df (zeros replaced
 * by 1e-10): -1 when the fit is concave (or t = 0), NaN when singular,
 * else 2 t / alpha_bar - 1 with alpha_bar = -mu_1 / mu_2 the fitted
 * minimiser's mirror image. */
double cpk__alpha(double t, const double f[2], const double df[2],
                  const double var_f[2], const double var_df[2]);

/* Unbiased sample mean and variance (divisor n - 1; NaN for n < 2). */
void cpk__mean_var(const double *x, int64_t n, double *mean, double *var);

#endif
