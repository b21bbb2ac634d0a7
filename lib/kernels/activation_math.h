/*
 * activation_math.h: scalar formulas (names through CPK_K, see elementwise.inc) of the elementwise activations, written
 * once for both float types. Include after defining
 *   CPK_T      the scalar type (float or double)
 *   CPK_FN(f)  the math function of that type (f##f or f)
 * The derivatives take both x and y = f(x) and use whichever is cheaper.
 */
#define CPK_SELU_SCALE ((CPK_T)1.0507009873554804934193349852946)
#define CPK_SELU_ALPHA ((CPK_T)1.6732632423543772848170429916717)

static inline CPK_T CPK_K(act_sigmoid)(CPK_T x) {
  if (x >= 0)
    return 1 / (1 + CPK_FN(exp)(-x));
  CPK_T e = CPK_FN(exp)(x);
  return e / (1 + e);
}

/* f(x) */
static inline CPK_T CPK_K(act_f)(cpk__act act, CPK_T a, CPK_T x) {
  switch (act) {
  case CPK__ACT_IDENTITY:
    return x;
  case CPK__ACT_RELU:
    return x > 0 ? x : 0;
  case CPK__ACT_LEAKY_RELU:
    return x > 0 ? x : a * x;
  case CPK__ACT_SIGMOID:
    return CPK_K(act_sigmoid)(x);
  case CPK__ACT_TANH:
    return CPK_FN(tanh)(x);
  case CPK__ACT_ELU: /* alpha * (exp(x) - 1) for x <= 0 */
    return x > 0 ? x : a * CPK_FN(expm1)(x);
  case CPK__ACT_SELU:
    return CPK_SELU_SCALE * (x > 0 ? x : CPK_SELU_ALPHA * CPK_FN(expm1)(x));
  case CPK__ACT_LOGSIGMOID: /* -log(1 + exp(-x)) = min(x,0) - log1p(exp(-|x|)) */
    return (x < 0 ? x : 0) - CPK_FN(log1p)(CPK_FN(exp)(-CPK_FN(fabs)(x)));
  case CPK__ACT_EXP:
    return CPK_FN(exp)(x);
  case CPK__ACT_LOG:
    return CPK_FN(log)(x);
  }
  return 0;
}

/* f'(x); at kinks the one-sided value PyTorch's backward uses. */
static inline CPK_T CPK_K(act_d1)(cpk__act act, CPK_T a, CPK_T x, CPK_T y) {
  switch (act) {
  case CPK__ACT_IDENTITY:
    return 1;
  case CPK__ACT_RELU:
    return x > 0 ? 1 : 0;
  case CPK__ACT_LEAKY_RELU:
    return x > 0 ? 1 : a;
  case CPK__ACT_SIGMOID: /* y (1 - y) */
    return y * (1 - y);
  case CPK__ACT_TANH: /* 1 - y^2 */
    return 1 - y * y;
  case CPK__ACT_ELU:
    return x > 0 ? 1 : a * CPK_FN(exp)(x);
  case CPK__ACT_SELU:
    return x > 0 ? CPK_SELU_SCALE : CPK_SELU_SCALE * CPK_SELU_ALPHA * CPK_FN(exp)(x);
  case CPK__ACT_LOGSIGMOID: /* sigmoid(-x) */
    return CPK_K(act_sigmoid)(-x);
  case CPK__ACT_EXP:
    return y;
  case CPK__ACT_LOG:
    return 1 / x;
  }
  return 0;
}

/* f''(x); zero for the piecewise-linear ones. */
static inline CPK_T CPK_K(act_d2)(cpk__act act, CPK_T a, CPK_T x, CPK_T y) {
  switch (act) {
  case CPK__ACT_IDENTITY:
  case CPK__ACT_RELU:
  case CPK__ACT_LEAKY_RELU:
    return 0;
  case CPK__ACT_SIGMOID: /* y (1 - y) (1 - 2y) */
    return y * (1 - y) * (1 - 2 * y);
  case CPK__ACT_TANH: /* -2 y (1 - y^2) */
    return -2 * y * (1 - y * y);
  case CPK__ACT_ELU:
    return x > 0 ? 0 : a * CPK_FN(exp)(x);
  case CPK__ACT_SELU:
    return x > 0 ? 0 : CPK_SELU_SCALE * CPK_SELU_ALPHA * CPK_FN(exp)(x);
  case CPK__ACT_LOGSIGMOID: { /* -sigmoid(x) sigmoid(-x) */
    CPK_T s = CPK_K(act_sigmoid)(x);
    return -s * (1 - s);
  }
  case CPK__ACT_EXP:
    return y;
  case CPK__ACT_LOG:
    return -1 / (x * x);
  }
  return 0;
}
