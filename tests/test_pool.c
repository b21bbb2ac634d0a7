/*
 * test_pool.c: the pooling and padding layers (maxpool1d/2d/3d,
 * avgpool1d/2d/3d, adaptive_avgpool2d, zeropad2d).
 *  - Over grids of settings: output shapes and forward values against a
 *    reference written here by direct enumeration of PyTorch's definitions,
 *    jac_mat and jac_t_mat against central finite differences in float64,
 *    and settings whose output would be empty refused at build naming the
 *    model line.
 *  - Forward values by hand for tiny cases (the first-maximum rule on ties,
 *    a window that holds only padding).
 *  - Forward and input gradient of sum(y * R) against PyTorch
 *    (tests/fixtures/pool, made by make_pool_fixtures.py), float64 and
 *    float32.
 *  - Large inputs (the multi-threaded paths) against the reference.
 *  - Invalid settings: model-file errors naming the line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "testutil.h"

#define N 2
#define V 2
#define H 1e-6
#define FD_RTOL 1e-7

typedef enum { FAM_MAX, FAM_AVG, FAM_ADAPTIVE, FAM_PAD } family;

/* One layer setting, as the test understands it (independently of the
 * library's parsing). Pool axes not used by a 1-d/2-d layer are held as
 * unit axes: in = 1, k = s = d = 1, p = 0. */
typedef struct {
  family fam;
  int dims; /* spatial axes of a pool (1..3) */
  int64_t k[3], s[3], p[3], d[3];
  int ceil_mode, cip; /* cip: count_include_pad */
  int64_t divisor;    /* divisor_override, 0 = None */
  int64_t osz[2];     /* adaptive: output size */
  int64_t pad[4];     /* zeropad: left, right, top, bottom */
  int ndim;           /* axes of one sample */
  int64_t sample[4];
} setting;

/* ------------------------------------------------------------ reference */

/* PyTorch's pooling_output_shape. */
static int64_t ref_out_len(int64_t in, int64_t k, int64_t s, int64_t p,
                           int64_t d, int ceil_mode) {
  int64_t num = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t o = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (o - 1) * s >= in + p)
    o--;
  return o;
}

/* Plane geometry: in[3], out[3] (leading unit axes for fewer dims) and the
 * number of planes in one sample. Returns 0 when an output extent is < 1. */
static int ref_geometry(const setting *st, int64_t *in, int64_t *out,
                        int64_t *planes) {
  int ok = 1;
  for (int a = 0; a < 3; a++)
    in[a] = out[a] = 1;
  *planes = 1;
  if (st->fam == FAM_PAD) {
    for (int i = 0; i < st->ndim - 2; i++)
      *planes *= st->sample[i];
    in[1] = st->sample[st->ndim - 2];
    in[2] = st->sample[st->ndim - 1];
    out[1] = in[1] + st->pad[2] + st->pad[3];
    out[2] = in[2] + st->pad[0] + st->pad[1];
    return out[1] >= 1 && out[2] >= 1;
  }
  *planes = st->sample[0];
  for (int i = 0; i < st->dims; i++) {
    int a = 3 - st->dims + i;
    in[a] = st->sample[1 + i];
    if (st->fam == FAM_ADAPTIVE)
      out[a] = st->osz[i];
    else
      out[a] = ref_out_len(in[a], st->k[i], st->s[i], st->p[i], st->d[i],
                           st->ceil_mode);
    ok = ok && out[a] >= 1;
  }
  return ok;
}

/* Output o of a plane is y[o] = sum_j w[j] * xp[idx[j]]; returns the number
 * of terms, or -1 for a max window without input positions (y = -inf). */
static int ref_taps(const setting *st, const int64_t *in, const int64_t *out,
                    const double *xp, int64_t o, int64_t *idx, double *w) {
  int64_t oc[3] = {o / (out[1] * out[2]), o / out[2] % out[1], o % out[2]};
  if (st->fam == FAM_PAD) {
    int64_t h = oc[1] - st->pad[2], x = oc[2] - st->pad[0];
    if (h < 0 || h >= in[1] || x < 0 || x >= in[2])
      return 0;
    idx[0] = h * in[2] + x;
    w[0] = 1;
    return 1;
  }
  int64_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, p[3] = {0}, d[3] = {1, 1, 1};
  int64_t lo[3] = {0}, hi[3] = {1, 1, 1};
  for (int i = 0; i < st->dims; i++) {
    int a = 3 - st->dims + i;
    k[a] = st->k[i], s[a] = st->s[i], p[a] = st->p[i], d[a] = st->d[i];
    /* adaptive: [floor(o*in/out), ceil((o+1)*in/out)) */
    lo[a] = (int64_t)floor((double)oc[a] * in[a] / out[a]);
    hi[a] = (int64_t)ceil((double)(oc[a] + 1) * in[a] / out[a]);
  }
  int n = 0;
  if (st->fam == FAM_ADAPTIVE) {
    for (int64_t a = lo[0]; a < hi[0]; a++)
      for (int64_t b = lo[1]; b < hi[1]; b++)
        for (int64_t c = lo[2]; c < hi[2]; c++)
          idx[n++] = (a * in[1] + b) * in[2] + c;
    for (int j = 0; j < n; j++)
      w[j] = 1.0 / n;
    return n;
  }
  /* Taps in scan order; q = o*s - p + tap*d per axis. */
  int64_t first = -1, at = -1, count_pad = 0;
  double best = -INFINITY;
  for (int64_t a = 0; a < k[0]; a++)
    for (int64_t b = 0; b < k[1]; b++)
      for (int64_t c = 0; c < k[2]; c++) {
        int64_t tap[3] = {a, b, c}, q[3];
        int inside = 1, in_padded = 1;
        for (int x = 0; x < 3; x++) {
          q[x] = oc[x] * s[x] - p[x] + tap[x] * d[x];
          inside = inside && q[x] >= 0 && q[x] < in[x];
          in_padded = in_padded && q[x] < in[x] + p[x];
        }
        count_pad += in_padded;
        if (!inside)
          continue;
        int64_t lin = (q[0] * in[1] + q[1]) * in[2] + q[2];
        if (st->fam == FAM_AVG) {
          idx[n++] = lin;
          continue;
        }
        if (first < 0)
          first = lin;
        if (xp[lin] > best) {
          best = xp[lin];
          at = lin;
        }
      }
  if (st->fam == FAM_MAX) {
    if (first < 0)
      return -1;
    idx[0] = at >= 0 ? at : first;
    w[0] = 1;
    return 1;
  }
  double div =
      st->divisor ? (double)st->divisor : (double)(st->cip ? count_pad : n);
  for (int j = 0; j < n; j++)
    w[j] = 1.0 / div;
  return n;
}

#define MAX_TAPS 4096

/* Reference forward y [nb, planes, *out] and, when u != NULL, the
 * reference J^T u (u [.., *out] -> jt [.., *in]) over nb samples. */
static void ref_apply(const setting *st, int64_t nb, const double *x, double *y,
                      const double *u, double *jt) {
  int64_t in[3], out[3], planes;
  ref_geometry(st, in, out, &planes);
  const int64_t ip = in[0] * in[1] * in[2], op = out[0] * out[1] * out[2];
  int64_t *idx = malloc(MAX_TAPS * sizeof *idx);
  double *w = malloc(MAX_TAPS * sizeof *w);
  if (jt != NULL)
    memset(jt, 0, (size_t)(nb * planes * ip) * sizeof *jt);
  for (int64_t pl = 0; pl < nb * planes; pl++)
    for (int64_t o = 0; o < op; o++) {
      int n = ref_taps(st, in, out, x + pl * ip, o, idx, w);
      double acc = n < 0 ? -INFINITY : 0;
      for (int j = 0; j < n; j++) {
        acc += w[j] * x[pl * ip + idx[j]];
        if (jt != NULL)
          jt[pl * ip + idx[j]] += w[j] * u[pl * op + o];
      }
      y[pl * op + o] = acc;
    }
  free(idx);
  free(w);
}

/* ---------------------------------------------------------- model lines */

static void tuple_str(char *buf, size_t len, int dims, const int64_t *v) {
  size_t at = 0;
  for (int i = 0; i < dims; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? "," : "",
                           (long long)v[i]);
}

static void setting_line(const setting *st, char *line, size_t len) {
  char k[32], s[32], p[32], d[32];
  tuple_str(k, sizeof k, st->dims, st->k);
  tuple_str(s, sizeof s, st->dims, st->s);
  tuple_str(p, sizeof p, st->dims, st->p);
  tuple_str(d, sizeof d, st->dims, st->d);
  switch (st->fam) {
  case FAM_MAX:
    snprintf(line, len,
             "maxpool%dd %s stride=%s padding=%s dilation=%s "
             "ceil_mode=%s",
             st->dims, k, s, p, d, st->ceil_mode ? "true" : "false");
    break;
  case FAM_AVG: {
    char extra[48] = "";
    if (st->divisor)
      snprintf(extra, sizeof extra, " divisor_override=%lld",
               (long long)st->divisor);
    snprintf(line, len,
             "avgpool%dd %s stride=%s padding=%s ceil_mode=%s "
             "count_include_pad=%s%s",
             st->dims, k, s, p, st->ceil_mode ? "true" : "false",
             st->cip ? "true" : "false", extra);
    break;
  }
  case FAM_ADAPTIVE:
    snprintf(line, len, "adaptive_avgpool2d %lld,%lld", (long long)st->osz[0],
             (long long)st->osz[1]);
    break;
  case FAM_PAD:
    tuple_str(k, sizeof k, 4, st->pad);
    snprintf(line, len, "zeropad2d %s", k);
    break;
  }
}

/* --------------------------------------------------------- the checks */

typedef struct {
  cpk_model *m;
  cpk__layer *l;
  cpk_context *ctx;
} layer_under_test;

static cpk_tensor *forward(layer_under_test *t, const cpk_tensor *x) {
  int64_t ys[6] = {x->shape[0]};
  cpk_tensor *y;
  memcpy(ys + 1, t->l->out_shape, (size_t)t->l->out_ndim * sizeof *ys);
  tu_ok(cpk_tensor_new(&y, x->dtype, t->l->out_ndim + 1, ys));
  tu_ok(t->l->kind->forward(t->l, t->ctx, x, y, 0));
  return y;
}

/* A batch [nb, *sample] of distinct values in [-1, 1) (a shuffled grid:
 * max-pool windows have no ties, so the Jacobian is well defined), or of
 * uniform draws. */
static cpk_tensor *make_input(const setting *st, int64_t nb, int distinct,
                              uint64_t seed) {
  int64_t xs[6] = {nb};
  memcpy(xs + 1, st->sample, (size_t)st->ndim * sizeof *xs);
  cpk_tensor *x = tu_random(CPK_F64, st->ndim + 1, xs, -1, 1, seed);
  if (!distinct)
    return x;
  int64_t n = cpk_tensor_numel(x);
  double *xd = x->data;
  for (int64_t i = 0; i < n; i++)
    xd[i] = -1 + 2.0 * (double)i / (double)n;
  uint64_t r = seed * 2862933555777941757ULL + 3037000493ULL;
  for (int64_t i = n - 1; i > 0; i--) {
    r = r * 6364136223846793005ULL + 1442695040888963407ULL;
    int64_t j = (int64_t)((r >> 33) % (uint64_t)(i + 1));
    double tmp = xd[i];
    xd[i] = xd[j];
    xd[j] = tmp;
  }
  return x;
}

/* Assert equal -inf positions, then compare the rest. */
static void assert_close_inf(double *a, double *b, int64_t n, double rtol,
                             const char *what) {
  for (int64_t i = 0; i < n; i++) {
    if (isinf(b[i]) || isinf(a[i])) {
      if (a[i] != b[i]) {
        print_error("%s: element %lld is %g, expected %g\n", what, (long long)i,
                    a[i], b[i]);
        fail();
      }
      a[i] = b[i] = 0;
    }
  }
  tu_assert_close_array(a, b, n, rtol, 1e-300, what);
}

/* jac_mat and jac_t_mat on random blocks [V, N, ...] against the full
 * per-sample Jacobian by central differences (one perturbation of input i
 * in every sample at once gives column i of every sample's Jacobian). */
static void check_fd(layer_under_test *t, const cpk_tensor *x, const char *line,
                     uint64_t seed) {
  const int64_t din = cpk__layer_in_numel(t->l),
                dout = cpk__layer_out_numel(t->l);
  double *jac = calloc((size_t)(N * dout * din), sizeof *jac);
  cpk_tensor *xp;
  tu_ok(cpk_tensor_convert(&xp, x, CPK_F64));
  double *xd = xp->data;
  for (int64_t i = 0; i < din; i++) {
    for (int n = 0; n < N; n++)
      xd[n * din + i] += H;
    cpk_tensor *yp = forward(t, xp);
    for (int n = 0; n < N; n++)
      xd[n * din + i] -= 2 * H;
    cpk_tensor *ym = forward(t, xp);
    for (int n = 0; n < N; n++) {
      xd[n * din + i] += H;
      for (int64_t o = 0; o < dout; o++) {
        double a = ((double *)yp->data)[n * dout + o];
        double b = ((double *)ym->data)[n * dout + o];
        /* a == b also covers outputs of -inf (windows of padding only) */
        jac[(n * dout + o) * din + i] = a == b ? 0 : (a - b) / (2 * H);
      }
    }
    cpk_tensor_free(yp);
    cpk_tensor_free(ym);
  }
  cpk_tensor_free(xp);
  cpk_tensor *y = forward(t, x); /* back at the unperturbed point */
  int64_t us[3] = {V, N, dout}, vs[3] = {V, N, din};
  cpk_tensor *u = tu_random(CPK_F64, 3, us, -1, 1, seed + 1);
  cpk_tensor *v = tu_random(CPK_F64, 3, vs, -1, 1, seed + 2);
  cpk_tensor *jt, *jv;
  tu_ok(cpk_tensor_new(&jt, CPK_F64, 3, vs));
  tu_ok(cpk_tensor_new(&jv, CPK_F64, 3, us));
  /* Garbage in the outputs: the primitives must overwrite everything. */
  for (int64_t i = 0; i < V * N * din; i++)
    ((double *)jt->data)[i] = NAN;
  for (int64_t i = 0; i < V * N * dout; i++)
    ((double *)jv->data)[i] = NAN;
  tu_ok(t->l->kind->jac_t_mat(t->l, t->ctx, x, y, u, jt));
  tu_ok(t->l->kind->jac_mat(t->l, t->ctx, x, y, v, jv));
  double *want_t = calloc((size_t)(V * N * din), sizeof *want_t);
  double *want = calloc((size_t)(V * N * dout), sizeof *want);
  const double *ud = u->data, *vd = v->data;
  for (int b = 0; b < V; b++)
    for (int n = 0; n < N; n++)
      for (int64_t o = 0; o < dout; o++)
        for (int64_t i = 0; i < din; i++) {
          double j = jac[(n * dout + o) * din + i];
          want_t[(b * N + n) * din + i] += j * ud[(b * N + n) * dout + o];
          want[(b * N + n) * dout + o] += j * vd[(b * N + n) * din + i];
        }
  char what[240];
  snprintf(what, sizeof what, "%s: jac_t_mat", line);
  tu_assert_close_array(jt->data, want_t, V * N * din, FD_RTOL, 1e-9, what);
  snprintf(what, sizeof what, "%s: jac_mat", line);
  tu_assert_close_array(jv->data, want, V * N * dout, FD_RTOL, 1e-9, what);
  free(want_t);
  free(want);
  free(jac);
  cpk_tensor_free(y);
  cpk_tensor_free(u);
  cpk_tensor_free(v);
  cpk_tensor_free(jt);
  cpk_tensor_free(jv);
}

/* Build the setting's layer; when the reference says the output would be
 * empty, expect CPK_ESHAPE naming the line. Otherwise check the output
 * shape, the forward against the reference and, with fd, the primitives
 * against finite differences. Returns 1 when the layer was built. */
static int check_setting(const setting *st, int fd, uint64_t seed) {
  char line[200], what[240];
  int64_t in[3], out[3], planes;
  int valid = ref_geometry(st, in, out, &planes);
  layer_under_test t = {0};
  setting_line(st, line, sizeof line);
  tu_ok(cpk_model_parse(&t.m, line, "grid"));
  int rc = cpk_model_build(t.m, st->ndim, st->sample, CPK_F64);
  if (!valid) {
    if (rc != CPK_ESHAPE || strstr(cpk_last_error(), "grid:1: ") == NULL) {
      print_error("%s: build returned %s (%s), expected CPK_ESHAPE naming "
                  "grid:1\n",
                  line, cpk_err_name(rc), cpk_last_error());
      fail();
    }
    cpk_model_free(t.m);
    return 0;
  }
  if (rc != CPK_OK) {
    print_error("%s: build failed: %s\n", line, cpk_last_error());
    fail();
  }
  tu_ok(cpk_context_new(&t.ctx, NULL));
  t.l = t.m->layers[0];
  int64_t want_numel = planes * out[0] * out[1] * out[2];
  if (cpk__layer_out_numel(t.l) != want_numel ||
      t.l->out_shape[t.l->out_ndim - 1] != out[2]) {
    print_error("%s: output of %lld elements, last axis %lld; expected %lld, "
                "%lld\n",
                line, (long long)cpk__layer_out_numel(t.l),
                (long long)t.l->out_shape[t.l->out_ndim - 1],
                (long long)want_numel, (long long)out[2]);
    fail();
  }
  cpk_tensor *x = make_input(st, N, st->fam == FAM_MAX, seed);
  cpk_tensor *y = forward(&t, x);
  double *want = malloc((size_t)cpk_tensor_numel(y) * sizeof *want);
  ref_apply(st, N, x->data, want, NULL, NULL);
  snprintf(what, sizeof what, "%s: forward", line);
  assert_close_inf(y->data, want, cpk_tensor_numel(y), 1e-14, what);
  free(want);
  cpk_tensor_free(y);
  if (fd)
    check_fd(&t, x, line, seed + 100);
  cpk_tensor_free(x);
  cpk_context_free(t.ctx);
  cpk_model_free(t.m);
  return 1;
}

static setting pool_setting(family fam, int dims, int64_t k, int64_t s,
                            int64_t p, int64_t d, int ceil_mode, int cip) {
  /* Odd and unequal extents: L = 11; H, W = 9, 8; D, H, W = 7, 6, 5. */
  static const int64_t spatial[3][3] = {{11}, {9, 8}, {7, 6, 5}};
  setting st = {.fam = fam, .dims = dims, .ceil_mode = ceil_mode, .cip = cip};
  st.ndim = dims + 1;
  st.sample[0] = dims == 3 ? 1 : 2;
  for (int i = 0; i < dims; i++) {
    st.k[i] = k, st.s[i] = s, st.p[i] = p, st.d[i] = d;
    st.sample[1 + i] = spatial[dims - 1][i];
  }
  return st;
}

/* kernel 1-5, stride 1-3, padding 0..k/2, dilation 1-2, ceil_mode both
 * ways, 1-d, 2-d, 3-d. */
static void test_grid_max(void **state) {
  int built = 0, refused = 0;
  uint64_t seed = 1000;
  for (int dims = 1; dims <= 3; dims++)
    for (int64_t k = 1; k <= 5; k++)
      for (int64_t s = 1; s <= 3; s++)
        for (int64_t p = 0; p <= k / 2; p++)
          for (int64_t d = 1; d <= 2; d++)
            for (int c = 0; c <= 1; c++) {
              setting st = pool_setting(FAM_MAX, dims, k, s, p, d, c, 0);
              if (check_setting(&st, 1, seed++))
                built++;
              else
                refused++;
            }
  /* Both outcomes must occur for the grid to mean something. */
  assert_true(built > 200);
  assert_true(refused > 0);
}

/* kernel 1-5, stride 1-3, padding 0..k/2, ceil_mode and count_include_pad
 * both ways, 1-d, 2-d, 3-d; plus divisor_override. */
static void test_grid_avg(void **state) {
  int built = 0;
  uint64_t seed = 5000;
  for (int dims = 1; dims <= 3; dims++)
    for (int64_t k = 1; k <= 5; k++)
      for (int64_t s = 1; s <= 3; s++)
        for (int64_t p = 0; p <= k / 2; p++)
          for (int c = 0; c <= 1; c++)
            for (int cip = 0; cip <= 1; cip++) {
              setting st = pool_setting(FAM_AVG, dims, k, s, p, 1, c, cip);
              built += check_setting(&st, 1, seed++);
            }
  assert_true(built > 200);
  for (int dims = 2; dims <= 3; dims++) {
    setting st = pool_setting(FAM_AVG, dims, 3, 2, 1, 1, 1, 0);
    st.divisor = 5;
    assert_true(check_setting(&st, 1, seed++));
    st.divisor = -2; /* PyTorch accepts any nonzero divisor */
    assert_true(check_setting(&st, 1, seed++));
  }
}

/* Divisible and non-divisible sizes, output smaller and larger than the
 * input. */
static void test_grid_adaptive(void **state) {
  static const int64_t ins[][2] = {{7, 10}, {5, 3}, {4, 4}, {1, 6}};
  static const int64_t outs[][2] = {{1, 1}, {3, 4}, {5, 2}, {4, 9}, {2, 2}};
  uint64_t seed = 9000;
  for (size_t i = 0; i < sizeof ins / sizeof ins[0]; i++)
    for (size_t o = 0; o < sizeof outs / sizeof outs[0]; o++) {
      setting st = {.fam = FAM_ADAPTIVE, .dims = 2, .ndim = 3};
      st.sample[0] = 2;
      st.sample[1] = ins[i][0];
      st.sample[2] = ins[i][1];
      st.osz[0] = outs[o][0];
      st.osz[1] = outs[o][1];
      assert_true(check_setting(&st, 1, seed++));
    }
}

/* Paddings from -2 to 2 on each side (negative: crop), on [C, H, W] and
 * [R, C, H, W] samples; all-crop settings must be refused. */
static void test_grid_zeropad(void **state) {
  int built = 0, refused = 0;
  uint64_t seed = 12000;
  for (int shape = 0; shape < 2; shape++)
    for (int64_t l = -2; l <= 2; l += 2)
      for (int64_t r = -2; r <= 1; r++)
        for (int64_t t = -3; t <= 2; t++)
          for (int64_t b = -2; b <= 1; b += 3) {
            setting st = {.fam = FAM_PAD, .pad = {l, r, t, b}};
            if (shape == 0) {
              st.ndim = 3;
              st.sample[0] = 2, st.sample[1] = 3, st.sample[2] = 4;
            } else {
              st.ndim = 4;
              st.sample[0] = 2, st.sample[1] = 1, st.sample[2] = 5;
              st.sample[3] = 3;
            }
            if (check_setting(&st, 1, seed++))
              built++;
            else
              refused++;
          }
  assert_true(built > 50);
  assert_true(refused > 0);
}

/* ------------------------------------------------------------ by hand */

/* Forward of `line` on one sample of shape `shape` holding x; returns y
 * (caller frees) and, when g != NULL, J^T g in gin. */
static cpk_tensor *by_hand(const char *line, int ndim, const int64_t *shape,
                           const double *x, const double *g, double *gin) {
  layer_under_test t = {0};
  int64_t xs[5] = {1};
  memcpy(xs + 1, shape, (size_t)ndim * sizeof *xs);
  tu_ok(cpk_model_parse(&t.m, line, "hand"));
  tu_ok(cpk_model_build(t.m, ndim, shape, CPK_F64));
  tu_ok(cpk_context_new(&t.ctx, NULL));
  t.l = t.m->layers[0];
  cpk_tensor *xt;
  tu_ok(cpk_tensor_new(&xt, CPK_F64, ndim + 1, xs));
  memcpy(xt->data, x, (size_t)cpk_tensor_numel(xt) * sizeof *x);
  cpk_tensor *y = forward(&t, xt);
  if (g != NULL) {
    int64_t gs[6] = {1};
    memcpy(gs + 1, y->shape, (size_t)y->ndim * sizeof *gs);
    cpk_tensor *gt, *gi;
    tu_ok(cpk_tensor_new(&gt, CPK_F64, y->ndim + 1, gs));
    memcpy(gt->data, g, (size_t)cpk_tensor_numel(gt) * sizeof *g);
    int64_t is[6] = {1, 1};
    memcpy(is + 2, shape, (size_t)ndim * sizeof *is);
    tu_ok(cpk_tensor_new(&gi, CPK_F64, ndim + 2, is));
    tu_ok(t.l->kind->jac_t_mat(t.l, t.ctx, xt, y, gt, gi));
    memcpy(gin, gi->data, (size_t)cpk_tensor_numel(gi) * sizeof *gin);
    cpk_tensor_free(gt);
    cpk_tensor_free(gi);
  }
  cpk_tensor_free(xt);
  cpk_context_free(t.ctx);
  cpk_model_free(t.m);
  return y;
}

static void expect(const cpk_tensor *y, const double *want, int64_t n,
                   const char *what) {
  assert_int_equal(cpk_tensor_numel(y), n);
  for (int64_t i = 0; i < n; i++) {
    double got = ((const double *)y->data)[i];
    if (!(got == want[i] || fabs(got - want[i]) <= 1e-15 * fabs(want[i]))) {
      print_error("%s: element %lld is %.17g, expected %.17g\n", what,
                  (long long)i, got, want[i]);
      fail();
    }
  }
}

/* Square windows of k taps and stride s that all lie inside (their own
 * kernel for k = 2, s = 2 and k = 3, s = 1 or 2): against a brute-force
 * scan in PyTorch's order (the first maximum wins, a NaN wins over what
 * came before it), on values with many ties and a few NaNs, sizes that
 * leave rows and columns out, 2d and 3d with a depth axis. */
static void max_inside_brute(const char *line, int64_t k, int64_t st,
                             int ndim, const int64_t *shape) {
  const int64_t depth = ndim == 4 ? shape[1] : 1;
  const int64_t c = shape[0], h = shape[ndim - 2], w = shape[ndim - 1];
  const int64_t ho = (h - k) / st + 1, wo = (w - k) / st + 1;
  const int64_t nin = c * depth * h * w, nout = c * depth * ho * wo;
  double *x = malloc((size_t)nin * sizeof *x), *gin = malloc((size_t)nin * sizeof *gin);
  double *want_gin = calloc((size_t)nin, sizeof *want_gin);
  double *g = malloc((size_t)nout * sizeof *g), *want_y = malloc((size_t)nout * sizeof *want_y);
  assert_true(x && gin && want_gin && g && want_y);
  for (int64_t i = 0; i < nin; i++)
    x[i] = i % 37 == 5 ? NAN : (double)((i * 7 + i / 5) % 3);
  for (int64_t o = 0; o < nout; o++)
    g[o] = (double)(o + 1);
  for (int64_t sl = 0; sl < c * depth; sl++)
    for (int64_t oh = 0; oh < ho; oh++)
      for (int64_t ow = 0; ow < wo; ow++) {
        const int64_t o = (sl * ho + oh) * wo + ow;
        double best = -INFINITY;
        int64_t at = -1;
        for (int64_t b = 0; b < k; b++)
          for (int64_t e = 0; e < k; e++) {
            const int64_t i = (sl * h + st * oh + b) * w + st * ow + e;
            if (x[i] > best || isnan(x[i]) || at < 0) {
              best = x[i];
              at = i;
            }
          }
        want_y[o] = best;
        want_gin[at] += g[o];
      }
  cpk_tensor *y = by_hand(line, ndim, shape, x, g, gin);
  assert_int_equal(cpk_tensor_numel(y), nout);
  for (int64_t o = 0; o < nout; o++) {
    const double got = ((const double *)y->data)[o];
    if (!(got == want_y[o] || (isnan(got) && isnan(want_y[o]))))
      fail_msg("%s: y[%lld] = %g, expected %g", line, (long long)o, got,
               want_y[o]);
  }
  for (int64_t i = 0; i < nin; i++)
    if (gin[i] != want_gin[i])
      fail_msg("%s: J^T g [%lld] = %g, expected %g", line, (long long)i,
               gin[i], want_gin[i]);
  cpk_tensor_free(y);
  free(x);
  free(gin);
  free(want_gin);
  free(g);
  free(want_y);
}

static void test_max_inside(void **state) {
  (void)state;
  max_inside_brute("maxpool2d 2", 2, 2, 3, (const int64_t[]){3, 5, 7});
  max_inside_brute("maxpool2d 2 stride=2", 2, 2, 3, (const int64_t[]){2, 8, 6});
  max_inside_brute("maxpool3d 1,2,2", 2, 2, 4, (const int64_t[]){2, 3, 4, 5});
  max_inside_brute("maxpool2d 3 stride=2", 3, 2, 3, (const int64_t[]){3, 7, 8});
  max_inside_brute("maxpool2d 3 stride=2", 3, 2, 3, (const int64_t[]){2, 9, 9});
  max_inside_brute("maxpool2d 3 stride=1", 3, 1, 3, (const int64_t[]){2, 6, 7});
  max_inside_brute("maxpool3d 1,3,3 stride=1,2,2", 3, 2, 4,
                   (const int64_t[]){2, 2, 5, 6});
  /* rows wider than one block of the kernel's buffers (2048 / k outputs)
   * and strips of a few rows */
  max_inside_brute("maxpool2d 3 stride=2", 3, 2, 3, (const int64_t[]){1, 7, 1501});
  max_inside_brute("maxpool2d 2", 2, 2, 3, (const int64_t[]){2, 5, 2100});
  max_inside_brute("maxpool2d 3 stride=1", 3, 1, 3, (const int64_t[]){1, 6, 1400});
  max_inside_brute("maxpool2d 3 stride=2", 3, 2, 3, (const int64_t[]){1, 41, 201});
}

static void test_by_hand(void **state) {
  double gin[64];
  {
    /* Ties: PyTorch takes the first maximum in scan order. */
    const int64_t s[2] = {1, 4};
    const double x[4] = {1, 3, 3, 2}, g[3] = {1, 10, 100};
    cpk_tensor *y = by_hand("maxpool1d 2 stride=1", 2, s, x, g, gin);
    expect(y, (double[]){3, 3, 3}, 3, "maxpool1d ties: y");
    cpk_tensor_free(y);
    assert_true(gin[0] == 0 && gin[1] == 11 && gin[2] == 100 && gin[3] == 0);
  }
  {
    /* A 2x2 window of equal values: everything goes to (0, 0); then row
     * before column: in [[1, 7], [7, 0]] the max is (0, 1). */
    const int64_t s[3] = {1, 2, 4};
    const double x[8] = {5, 5, 1, 7, 5, 5, 7, 0}, g[2] = {2, 3};
    cpk_tensor *y = by_hand("maxpool2d 2", 3, s, x, g, gin);
    expect(y, (double[]){5, 7}, 2, "maxpool2d ties: y");
    cpk_tensor_free(y);
    expect(
        &(cpk_tensor){.dtype = CPK_F64, .ndim = 1, .shape = {8}, .data = gin},
        (double[]){2, 0, 0, 3, 0, 0, 0, 0}, 8, "maxpool2d ties: J^T g");
  }
  {
    /* Ties in windows cut by the padding (one window at a time in the
     * kernel): [pad, 2, 2] -> offset 0, [2, 2, pad] -> offset 1. */
    const int64_t s[2] = {1, 3};
    const double x[3] = {2, 2, 2}, g[3] = {1, 10, 100};
    cpk_tensor *y = by_hand("maxpool1d 3 stride=1 padding=1", 2, s, x, g, gin);
    expect(y, (double[]){2, 2, 2}, 3, "maxpool1d border ties: y");
    cpk_tensor_free(y);
    assert_true(gin[0] == 11 && gin[1] == 100 && gin[2] == 0);
  }
  {
    /* A window of -inf values keeps its first position (PyTorch's rule);
     * a NaN wins over everything after it. */
    const int64_t s[2] = {1, 4};
    const double x[4] = {-INFINITY, -INFINITY, 1, -INFINITY}, g[2] = {1, 10};
    cpk_tensor *y = by_hand("maxpool1d 2", 2, s, x, g, gin);
    expect(y, (double[]){-INFINITY, 1}, 2, "maxpool1d -inf: y");
    cpk_tensor_free(y);
    assert_true(gin[0] == 1 && gin[1] == 0 && gin[2] == 10 && gin[3] == 0);
    const double xn[4] = {1, NAN, 3, 2}, gn[3] = {1, 10, 100};
    y = by_hand("maxpool1d 2 stride=1", 2, s, xn, gn, gin);
    const double *yd = y->data;
    assert_true(isnan(yd[0]) && isnan(yd[1]) && yd[2] == 3);
    cpk_tensor_free(y);
    assert_true(gin[0] == 0 && gin[1] == 11 && gin[2] == 100 && gin[3] == 0);
  }
  {
    /* A window of padding only: -inf, and no derivative. */
    const int64_t s[2] = {1, 1};
    const double x[1] = {5}, g[1] = {1};
    cpk_tensor *y =
        by_hand("maxpool1d 2 dilation=2 padding=1", 2, s, x, g, gin);
    expect(y, (double[]){-INFINITY}, 1, "maxpool1d all padding: y");
    cpk_tensor_free(y);
    assert_true(gin[0] == 0);
  }
  {
    /* Padding is -inf, not 0: max of {pad, -3, -1} is -1. */
    const int64_t s[2] = {1, 3};
    const double x[3] = {-3, -1, -2};
    cpk_tensor *y =
        by_hand("maxpool1d 3 stride=2 padding=1", 2, s, x, NULL, NULL);
    expect(y, (double[]){-1, -1}, 2, "maxpool1d padding: y");
    cpk_tensor_free(y);
  }
  {
    /* avgpool1d 3 stride=2 padding=1 on [1, 2, 3, 4]: windows [-1, 2) and
     * [1, 4); with the padding counted: 3/3, 9/3; without: 3/2, 9/3. */
    const int64_t s[2] = {1, 4};
    const double x[4] = {1, 2, 3, 4};
    cpk_tensor *y =
        by_hand("avgpool1d 3 stride=2 padding=1", 2, s, x, NULL, NULL);
    expect(y, (double[]){1, 3}, 2, "avgpool1d count_include_pad");
    cpk_tensor_free(y);
    y = by_hand("avgpool1d 3 2 1 count_include_pad=false", 2, s, x, NULL, NULL);
    expect(y, (double[]){1.5, 3}, 2, "avgpool1d no pad");
    cpk_tensor_free(y);
    /* ceil_mode adds a window [3, 6), clipped to the padded input [3, 5):
     * divisor 2 with the padding, 1 without. */
    y = by_hand("avgpool1d 3 2 1 ceil_mode=true", 2, s, x, NULL, NULL);
    expect(y, (double[]){1, 3, 2}, 3, "avgpool1d ceil 4");
    cpk_tensor_free(y);
    y = by_hand("avgpool1d 3 2 1 ceil_mode=true count_include_pad=false", 2, s,
                x, NULL, NULL);
    expect(y, (double[]){1.5, 3, 4}, 3, "avgpool1d ceil 4 no pad");
    cpk_tensor_free(y);
    const int64_t s5[2] = {1, 5};
    const double x5[5] = {1, 2, 3, 4, 5};
    /* On 5 values the last window [3, 6) lies inside the padded input. */
    y = by_hand("avgpool1d 3 2 1 ceil_mode=true", 2, s5, x5, NULL, NULL);
    expect(y, (double[]){1, 3, 3}, 3, "avgpool1d ceil 5");
    cpk_tensor_free(y);
    y = by_hand("avgpool1d 3 2 1 ceil_mode=true count_include_pad=false", 2, s5,
                x5, NULL, NULL);
    expect(y, (double[]){1.5, 3, 4.5}, 3, "avgpool1d ceil 5 no pad");
    cpk_tensor_free(y);
    y = by_hand("avgpool1d 4 ceil_mode=true", 2, s5, x5, NULL, NULL);
    expect(y, (double[]){2.5, 5}, 2, "avgpool1d k4 ceil 5");
    cpk_tensor_free(y);
  }
  {
    /* adaptive 3x3 -> 2x2 over 1..9: windows [0, 2) and [1, 3) per axis. */
    const int64_t s[3] = {1, 3, 3};
    const double x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    cpk_tensor *y = by_hand("adaptive_avgpool2d 2", 3, s, x, NULL, NULL);
    expect(y, (double[]){3, 4, 6, 7}, 4, "adaptive 3x3 -> 2x2");
    cpk_tensor_free(y);
  }
  {
    /* zeropad2d left=1, right=0, top=0, bottom=1; then a crop. */
    const int64_t s[3] = {1, 2, 2};
    const double x[4] = {1, 2, 3, 4};
    cpk_tensor *y = by_hand("zeropad2d 1,0,0,1", 3, s, x, NULL, NULL);
    expect(y, (double[]){0, 1, 2, 0, 3, 4, 0, 0, 0}, 9, "zeropad2d");
    cpk_tensor_free(y);
    y = by_hand("zeropad2d -1,1,0,-1", 3, s, x, NULL, NULL);
    expect(y, (double[]){2, 0}, 2, "zeropad2d crop");
    cpk_tensor_free(y);
  }
}

/* ------------------------------------------------------- against PyTorch */

static cpk_tensor *load(const char *dir, const char *name) {
  char rel[256];
  cpk_tensor *t;
  snprintf(rel, sizeof rel, "tests/fixtures/pool/%s/%s", dir, name);
  tu_ok(cpk_npy_read(tu_src(rel), &t));
  return t;
}

/* y and d sum(y * R) / dx from the layer against PyTorch's, in `dt`. */
static void check_fixtures(cpk_dtype dt, double rtol) {
  FILE *f = fopen(tu_src("tests/fixtures/pool/cases.txt"), "r");
  assert_non_null(f);
  char text[512];
  int ncases = 0;
  while (fgets(text, sizeof text, f) != NULL) {
    char name[64], what[600];
    int at;
    text[strcspn(text, "\n")] = '\0';
    assert_int_equal(sscanf(text, "%63s %n", name, &at), 1);
    const char *line = text + at;
    cpk_tensor *x = load(name, "x.npy"), *r = load(name, "r.npy");
    cpk_tensor *want_y = load(name, "y.npy"),
               *want_g = load(name, "grad_x.npy");
    layer_under_test t = {0};
    tu_ok(cpk_model_parse(&t.m, line, name));
    tu_ok(cpk_model_build(t.m, x->ndim - 1, x->shape + 1, dt));
    tu_ok(cpk_context_new(&t.ctx, NULL));
    t.l = t.m->layers[0];
    cpk_tensor *xc, *rc, *g;
    tu_ok(cpk_tensor_convert(&xc, x, dt));
    /* R as a block [1, N, *out]; the gradient comes back as [1, N, *in]. */
    int64_t bs[7] = {1};
    memcpy(bs + 1, r->shape, (size_t)r->ndim * sizeof *bs);
    tu_ok(cpk_tensor_new(&rc, dt, r->ndim + 1, bs));
    for (int64_t i = 0; i < cpk_tensor_numel(r); i++)
      cpk_tensor_set(rc, i, cpk_tensor_get(r, i));
    memcpy(bs + 1, x->shape, (size_t)x->ndim * sizeof *bs);
    tu_ok(cpk_tensor_new(&g, dt, x->ndim + 1, bs));
    cpk_tensor *y = forward(&t, xc);
    snprintf(what, sizeof what, "%s (%s, %s): output", name, line,
             cpk_dtype_name(dt));
    tu_assert_close(y, want_y, rtol, 0, what);
    tu_ok(t.l->kind->jac_t_mat(t.l, t.ctx, xc, y, rc, g));
    snprintf(what, sizeof what, "%s (%s, %s): input gradient", name, line,
             cpk_dtype_name(dt));
    int64_t n = cpk_tensor_numel(want_g);
    assert_int_equal(cpk_tensor_numel(g), n);
    double *a = malloc((size_t)n * sizeof *a),
           *b = malloc((size_t)n * sizeof *b);
    for (int64_t i = 0; i < n; i++) {
      a[i] = cpk_tensor_get(g, i);
      b[i] = cpk_tensor_get(want_g, i);
    }
    tu_assert_close_array(a, b, n, rtol, 0, what);
    free(a);
    free(b);
    cpk_tensor_free(y);
    cpk_tensor_free(g);
    cpk_tensor_free(rc);
    cpk_tensor_free(xc);
    cpk_tensor_free(x);
    cpk_tensor_free(r);
    cpk_tensor_free(want_y);
    cpk_tensor_free(want_g);
    cpk_context_free(t.ctx);
    cpk_model_free(t.m);
    ncases++;
  }
  fclose(f);
  assert_true(ncases >= 15);
}

static void test_pytorch_f64(void **state) { check_fixtures(CPK_F64, 1e-12); }
static void test_pytorch_f32(void **state) { check_fixtures(CPK_F32, 1e-5); }

/* --------------------------------------------------- large (threaded) */

/* Inputs large enough for the parallel loops, float64 and float32, against
 * the reference: forward, J^T u and (through <J^T u, v> = <u, J v>) J. */
static void check_large(const setting *st, uint64_t seed) {
  const int64_t nb = 4;
  char line[200], what[240];
  int64_t in[3], out[3], planes;
  assert_true(ref_geometry(st, in, out, &planes));
  setting_line(st, line, sizeof line);
  cpk_tensor *x = make_input(st, nb, 1, seed);
  const int64_t nin = cpk_tensor_numel(x);
  const int64_t nout = nb * planes * out[0] * out[1] * out[2];
  int64_t us[2] = {1, nout};
  cpk_tensor *u = tu_random(CPK_F64, 2, us, -1, 1, seed + 1);
  double *want_y = malloc((size_t)nout * sizeof *want_y);
  double *want_t = malloc((size_t)nin * sizeof *want_t);
  ref_apply(st, nb, x->data, want_y, u->data, want_t);
  for (int pass = 0; pass < 2; pass++) {
    cpk_dtype dt = pass == 0 ? CPK_F64 : CPK_F32;
    double tol = pass == 0 ? 1e-13 : 1e-5;
    layer_under_test t = {0};
    tu_ok(cpk_model_parse(&t.m, line, "large"));
    tu_ok(cpk_model_build(t.m, st->ndim, st->sample, dt));
    tu_ok(cpk_context_new(&t.ctx, NULL));
    t.l = t.m->layers[0];
    cpk_tensor *xc, *uc, *jt;
    tu_ok(cpk_tensor_convert(&xc, x, dt));
    tu_ok(cpk_tensor_convert(&uc, u, dt));
    tu_ok(cpk_tensor_new(&jt, dt, x->ndim, x->shape));
    cpk_tensor *y = forward(&t, xc);
    snprintf(what, sizeof what, "%s (%s): forward", line, cpk_dtype_name(dt));
    double *got = malloc((size_t)nout * sizeof *got);
    for (int64_t i = 0; i < nout; i++)
      got[i] = cpk_tensor_get(y, i);
    tu_assert_close_array(got, want_y, nout, tol, 0, what);
    tu_ok(t.l->kind->jac_t_mat(t.l, t.ctx, xc, y, uc, jt));
    snprintf(what, sizeof what, "%s (%s): jac_t_mat", line, cpk_dtype_name(dt));
    double *gt = malloc((size_t)nin * sizeof *gt);
    for (int64_t i = 0; i < nin; i++)
      gt[i] = cpk_tensor_get(jt, i);
    tu_assert_close_array(gt, want_t, nin, tol, 0, what);
    /* J x equals the forward for these positively homogeneous layers. */
    cpk_tensor *jx;
    tu_ok(cpk_tensor_new(&jx, dt, y->ndim, y->shape));
    tu_ok(t.l->kind->jac_mat(t.l, t.ctx, xc, y, xc, jx));
    snprintf(what, sizeof what, "%s (%s): jac_mat x", line, cpk_dtype_name(dt));
    tu_assert_close(jx, y, 0, 0, what);
    free(got);
    free(gt);
    cpk_tensor_free(jx);
    cpk_tensor_free(y);
    cpk_tensor_free(jt);
    cpk_tensor_free(uc);
    cpk_tensor_free(xc);
    cpk_context_free(t.ctx);
    cpk_model_free(t.m);
  }
  free(want_y);
  free(want_t);
  cpk_tensor_free(u);
  cpk_tensor_free(x);
}

static void test_large(void **state) {
  setting st = pool_setting(FAM_MAX, 2, 3, 2, 1, 1, 1, 0);
  st.sample[0] = 8, st.sample[1] = 33, st.sample[2] = 31;
  check_large(&st, 1);
  st.fam = FAM_AVG;
  check_large(&st, 2);
  st = pool_setting(FAM_MAX, 3, 2, 2, 0, 1, 0, 0);
  st.sample[0] = 4, st.sample[1] = 12, st.sample[2] = 13, st.sample[3] = 14;
  check_large(&st, 3);
  st = (setting){.fam = FAM_ADAPTIVE,
                 .dims = 2,
                 .ndim = 3,
                 .sample = {8, 37, 29},
                 .osz = {7, 5}};
  check_large(&st, 4);
  st = (setting){
      .fam = FAM_PAD, .ndim = 3, .sample = {8, 40, 30}, .pad = {2, -3, -1, 4}};
  check_large(&st, 5);
}

/* A derivative asked for after a forward of another batch size fails
 * cleanly instead of reading stale indices. */
static void test_max_needs_forward(void **state) {
  layer_under_test t = {0};
  const int64_t s[3] = {2, 4, 4}, xs[4] = {3, 2, 4, 4}, bs[5] = {1, 3, 2, 2, 2};
  tu_ok(cpk_model_parse(&t.m, "maxpool2d 2", "m"));
  tu_ok(cpk_model_build(t.m, 3, s, CPK_F64));
  tu_ok(cpk_context_new(&t.ctx, NULL));
  t.l = t.m->layers[0];
  cpk_tensor *x = tu_random(CPK_F64, 4, xs, -1, 1, 3), *u, *g;
  tu_ok(cpk_tensor_new(&u, CPK_F64, 5, bs));
  int64_t gs[5] = {1, 3, 2, 4, 4};
  tu_ok(cpk_tensor_new(&g, CPK_F64, 5, gs));
  assert_int_equal(t.l->kind->jac_t_mat(t.l, t.ctx, x, NULL, u, g), CPK_EINVAL);
  cpk_tensor *y = forward(&t, x);
  tu_ok(t.l->kind->jac_t_mat(t.l, t.ctx, x, y, u, g));
  cpk_tensor_free(y);
  cpk_tensor_free(x);
  cpk_tensor_free(u);
  cpk_tensor_free(g);
  cpk_context_free(t.ctx);
  cpk_model_free(t.m);
}

/* ------------------------------------------------------------- errors */

static void expect_parse_error(const char *text, int status,
                               const char *needle) {
  cpk_model *m = NULL;
  int rc = cpk_model_parse(&m, text, "m.txt");
  if (rc != status || strstr(cpk_last_error(), "m.txt:2: ") == NULL ||
      strstr(cpk_last_error(), needle) == NULL) {
    print_error("'%s': got %s (%s), expected %s mentioning m.txt:2 and "
                "'%s'\n",
                text, cpk_err_name(rc), cpk_last_error(), cpk_err_name(status),
                needle);
    fail();
  }
  cpk_model_free(m);
}

static void expect_build_error(const char *text, int ndim, const int64_t *shape,
                               const char *needle) {
  cpk_model *m;
  tu_ok(cpk_model_parse(&m, text, "m.txt"));
  int rc = cpk_model_build(m, ndim, shape, CPK_F64);
  if (rc != CPK_ESHAPE || strstr(cpk_last_error(), "m.txt:2: ") == NULL ||
      strstr(cpk_last_error(), needle) == NULL) {
    print_error("'%s': build got %s (%s), expected CPK_ESHAPE mentioning "
                "m.txt:2 and '%s'\n",
                text, cpk_err_name(rc), cpk_last_error(), needle);
    fail();
  }
  cpk_model_free(m);
}

static void test_errors(void **state) {
  expect_parse_error("identity\nmaxpool2d 2 stride=0", CPK_EFORMAT, "stride");
  expect_parse_error("identity\nmaxpool2d 2,0", CPK_EFORMAT, "kernel_size");
  expect_parse_error("identity\nmaxpool1d 2 dilation=0", CPK_EFORMAT,
                     "dilation");
  expect_parse_error("identity\nmaxpool2d 3 padding=2", CPK_EFORMAT, "padding");
  expect_parse_error("identity\nmaxpool2d 3 padding=-1", CPK_EFORMAT,
                     "padding");
  expect_parse_error("identity\nmaxpool3d 2,2", CPK_EFORMAT, "kernel_size");
  expect_parse_error("identity\nmaxpool2d 2 return_indices=true", CPK_ENOTSUP,
                     "return_indices");
  expect_parse_error("identity\nmaxpool2d", CPK_EFORMAT, "kernel_size");
  expect_parse_error("identity\navgpool2d 2 stride=-1", CPK_EFORMAT, "stride");
  expect_parse_error("identity\navgpool2d 2 divisor_override=0", CPK_EFORMAT,
                     "divisor_override");
  expect_parse_error("identity\navgpool1d 2 divisor_override=2", CPK_EFORMAT,
                     "divisor_override");
  expect_parse_error("identity\navgpool2d 2 dilation=2", CPK_EFORMAT,
                     "dilation");
  expect_parse_error("identity\nadaptive_avgpool2d 0", CPK_EFORMAT,
                     "output_size");
  expect_parse_error("identity\nadaptive_avgpool2d 2,2,2", CPK_EFORMAT,
                     "output_size");
  expect_parse_error("identity\nzeropad2d 1,2", CPK_EFORMAT, "padding");
  const int64_t s133[3] = {1, 3, 3}, s122[3] = {1, 2, 2}, s34[2] = {3, 4};
  const int64_t s5[1] = {5};
  expect_build_error("identity\nmaxpool2d 5", 3, s133, "larger than");
  expect_build_error("identity\nmaxpool2d 3 dilation=2 padding=1", 3, s122,
                     "larger than");
  expect_build_error("identity\navgpool2d 4 stride=1 padding=0", 3, s133,
                     "larger than");
  expect_build_error("identity\nmaxpool2d 2", 2, s34, "(C, H, W)");
  expect_build_error("identity\navgpool3d 2", 3, s133, "(C, D, H, W)");
  expect_build_error("identity\nadaptive_avgpool2d 2", 1, s5, "(C, H, W)");
  expect_build_error("identity\nzeropad2d -2", 3, s133, "output");
  expect_build_error("identity\nzeropad2d 1", 1, s5, "at least 2 axes");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_by_hand),
      cmocka_unit_test(test_max_inside),
      cmocka_unit_test(test_grid_max),
      cmocka_unit_test(test_grid_avg),
      cmocka_unit_test(test_grid_adaptive),
      cmocka_unit_test(test_grid_zeropad),
      cmocka_unit_test(test_pytorch_f64),
      cmocka_unit_test(test_pytorch_f32),
      cmocka_unit_test(test_large),
      cmocka_unit_test(test_max_needs_forward),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
