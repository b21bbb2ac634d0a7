/*
 * error_propagation.c: the textbook rules for propagating uncertainties,
 * reproduced with forward-mode Jacobians through the public API.
 *
 *   examples/error_propagation [M N [SAMPLES]]   (defaults 2 3 1000000)
 *
 * Two measured values x = 2.0 +- 0.1 and y = 3.0 +- 0.1 (independent) are
 * the input (x, y) of five small networks:
 *
 *   q = x + y       linear 2 1 with W = [1,  1]
 *   q = x - y       linear 2 1 with W = [1, -1]
 *   q = x * y       log; linear 2 1 with W = [1,  1]; exp
 *   q = x / y       log; linear 2 1 with W = [1, -1]; exp
 *   q = x^M * y^N   log; linear 2 1 with W = [M,  N]; exp
 *
 * (exp(a log x + b log y) = x^a y^b). For each, cpk_propagate gives the
 * first-order sigma_q = sqrt(sum_i (dq/dx_i sigma_i)^2) from the Jacobian,
 * and a Monte Carlo estimate from SAMPLES Gaussian draws of (x, y) through
 * the network. The table sets them beside the textbook formulas:
 *   sums and differences:    sqrt(sx^2 + sy^2)
 *   products and quotients:  |q| sqrt((sx/x)^2 + (sy/y)^2)
 *   powers:                  |q| sqrt((M sx/x)^2 + (N sy/y)^2)
 * Large powers show where the linearisation stops holding: the Monte Carlo
 * sigma (and mean) drift away from the first-order values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <curvpack.h>

static const double X = 2.0, Y = 3.0, SX = 0.1, SY = 0.1;

typedef struct {
  const char *label;
  int logexp;  /* log; linear; exp instead of a lone linear */
  double a, b; /* W = [a, b] */
  int kind;    /* 0 sum/difference, 1 product/quotient, 2 power */
} textbook_case;

static int fail(const char *what, int status) {
  fprintf(stderr, "error_propagation: %s: %s\n", what,
          cpk_last_error()[0] ? cpk_last_error() : cpk_strerror(status));
  return 1;
}

/* The textbook sigma of q. */
static double formula(const textbook_case *c, double q) {
  switch (c->kind) {
  case 0:
    return sqrt(SX * SX + SY * SY);
  case 1:
    return fabs(q) * sqrt(pow(SX / X, 2) + pow(SY / Y, 2));
  default:
    return fabs(q) * sqrt(pow(c->a * SX / X, 2) + pow(c->b * SY / Y, 2));
  }
}

/* The network of case c, built and with W set, in float64. */
static int build(const textbook_case *c, cpk_model **out) {
  const int64_t shape = 2;
  cpk_model *m = NULL;
  cpk_tensor *w;
  int rc = cpk_model_new(&m);
  if (rc == CPK_OK && c->logexp)
    rc = cpk_model_add_line(m, "log");
  if (rc == CPK_OK)
    rc = cpk_model_add_line(m, "linear 2 1 bias=false");
  if (rc == CPK_OK && c->logexp)
    rc = cpk_model_add_line(m, "exp");
  if (rc == CPK_OK)
    rc = cpk_model_build(m, 1, &shape, CPK_F64);
  if (rc == CPK_OK)
    rc = cpk_model_param(m, 0, NULL, &w);
  if (rc != CPK_OK) {
    cpk_model_free(m);
    return rc;
  }
  cpk_tensor_set(w, 0, c->a);
  cpk_tensor_set(w, 1, c->b);
  *out = m;
  return CPK_OK;
}

int main(int argc, char **argv) {
  double m = argc > 1 ? atof(argv[1]) : 2.0;
  double n = argc > 2 ? atof(argv[2]) : 3.0;
  int64_t samples = argc > 3 ? atoll(argv[3]) : 1000000;
  char power[64];
  snprintf(power, sizeof power, "x^%g * y^%g", m, n);
  const textbook_case cases[] = {
      {"x + y", 0, 1.0, 1.0, 0}, {"x - y", 0, 1.0, -1.0, 0},
      {"x * y", 1, 1.0, 1.0, 1}, {"x / y", 1, 1.0, -1.0, 1},
      {power, 1, m, n, 2},
  };
  const int64_t xshape[2] = {1, 2}, sshape = 2;
  cpk_tensor *input = NULL, *sigma = NULL;
  cpk_context *ctx = NULL;
  int rc, status = 1;
  if (samples < 2) {
    fprintf(stderr, "error_propagation: SAMPLES must be at least 2\n");
    return 2;
  }
  if ((rc = cpk_tensor_new(&input, CPK_F64, 2, xshape)) != CPK_OK ||
      (rc = cpk_tensor_new(&sigma, CPK_F64, 1, &sshape)) != CPK_OK ||
      (rc = cpk_context_new(&ctx, NULL)) != CPK_OK) {
    status = fail("setup", rc);
    goto done;
  }
  cpk_tensor_set(input, 0, X);
  cpk_tensor_set(input, 1, Y);
  cpk_tensor_set(sigma, 0, SX);
  cpk_tensor_set(sigma, 1, SY);

  printf("x = %.1f +- %.1f, y = %.1f +- %.1f; Monte Carlo: %lld draws "
         "(seed 0)\n\n",
         X, SX, Y, SY, (long long)samples);
  printf("| q | network | value | formula sigma | Jacobian sigma | "
         "Monte Carlo sigma | Monte Carlo mean |\n"
         "|---|---|---:|---:|---:|---:|---:|\n");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const textbook_case *c = &cases[i];
    cpk_model *model = NULL;
    cpk_results *res = NULL;
    if ((rc = build(c, &model)) != CPK_OK ||
        (rc = cpk_propagate(ctx, model, input, sigma, samples, &res)) !=
            CPK_OK) {
      status = fail(c->label, rc);
      cpk_model_free(model);
      goto done;
    }
    double q = cpk_tensor_get(cpk_results_find(res, "output"), 0);
    printf("| %s | %s | %.6g | %.6f | %.6f | %.6f | %.6g |\n", c->label,
           c->logexp ? "log, linear, exp" : "linear", q, formula(c, q),
           cpk_tensor_get(cpk_results_find(res, "sigma"), 0),
           cpk_tensor_get(cpk_results_find(res, "mc_sigma"), 0),
           cpk_tensor_get(cpk_results_find(res, "mc_mean"), 0));
    cpk_results_free(res);
    cpk_model_free(model);
  }
  status = 0;
done:
  cpk_context_free(ctx);
  cpk_tensor_free(sigma);
  cpk_tensor_free(input);
  return status;
}
