/*
 * conv_dnnl.c: the convolution core of conv_common.h through oneDNN
 * (configure --with-dnnl), on the CPU in float32: the forward map
 * Y = conv(X) (+ b), its adjoint X = conv^T(Y), and the weight gradient
 * summed over the batch, dW = sum_n dconv/dW (X_n)^T Y_n. oneDNN computes
 * them with direct JIT kernels on blocked layouts, which beats unfolding
 * (im2col, 25x the image for a 5x5 kernel) + GEMM by about 2x on the
 * DeepOBS convolutions; the reorders from and to C order cost a pass over
 * the input and output only.
 *
 * Shapes (the core's, conv_common.h): X [count, cx, *in], W [cy, cx/G, *K]
 * (oneDNN's [G, cy/G, cx/G, *K] when G > 1, the same memory), Y [count, cy,
 * *out]; leading padding geom.pad, trailing padding whatever makes the
 * output extent come out (negative where the last inputs are not reached).
 *
 * Each entry point writes out := beta * out + (the result), and returns
 * CPK_OK once it computed, CPK__CONV_DECLINED when
 * oneDNN has no implementation for the case (the caller then unfolds), or
 * an error (CPK_ENOMEM, or CPK_EIO naming the oneDNN call that failed).
 * Descriptors and primitives are made at each call (oneDNN's primitive
 * cache keeps the generated kernels); the reordered copies are tracked
 * allocations (cpk__malloc), so they count toward --max-memory.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <dnnl.h>

#include "conv_common.h"

static dnnl_engine_t engine;
static int engine_ok;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static int enabled = -1; /* -1: not read yet from CPK_DNNL */

static void engine_init(void) {
  engine_ok = dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success;
}

void cpk__dnnl_enable(int on) { enabled = on != 0; }

/* On unless CPK_DNNL=0 (the environment, read once) or cpk__dnnl_enable(0). */
int cpk__dnnl_enabled(void) {
  if (enabled < 0) {
    const char *env = getenv("CPK_DNNL");
    enabled = !(env != NULL && strcmp(env, "0") == 0);
  }
  return enabled;
}

/* Enabled, and an engine could be made. */
static int usable(void) {
  if (!cpk__dnnl_enabled())
    return 0;
  pthread_once(&engine_once, engine_init);
  return engine_ok;
}

int cpk__dnnl_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b,
                    int64_t ldb, float beta, float *c, int64_t ldc) {
  if (!cpk__dnnl_enabled())
    return CPK__CONV_DECLINED;
  return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                    a, lda, b, ldb, beta, c, ldc) == dnnl_success
             ? CPK_OK
             : CPK__CONV_DECLINED;
}

/* The core's descriptors in C order: src = X, wei = W, dst = Y. */
typedef struct {
  dnnl_memory_desc_t src, wei, dst, bias;
  dnnl_memory_desc_t src_any, wei_any, dst_any;
  dnnl_dims_t strides, dilates, pad_l, pad_r;
} conv_mds;

static int mds_of(const cpk__conv *s, int64_t count, conv_mds *m) {
  static const dnnl_format_tag_t data_tag[3] = {dnnl_ncw, dnnl_nchw,
                                                dnnl_ncdhw};
  static const dnnl_format_tag_t wei_tag[3] = {dnnl_oiw, dnnl_oihw,
                                               dnnl_oidhw};
  static const dnnl_format_tag_t gwei_tag[3] = {dnnl_goiw, dnnl_goihw,
                                                dnnl_goidhw};
  const cpk__im2col_geom *g = &s->geom;
  const int d = s->dims, lead = 3 - d, grouped = s->groups > 1;
  dnnl_dims_t src = {count, s->cx}, dst = {count, s->cy}, wei, bias = {s->cy};
  int w = 0;
  if (grouped)
    wei[w++] = s->groups;
  wei[w++] = s->cy / s->groups;
  wei[w++] = s->cx / s->groups;
  for (int a = 0; a < d; a++) {
    const int64_t in = g->in[lead + a], out = g->out[lead + a];
    const int64_t k = g->k[lead + a], st = g->stride[lead + a];
    const int64_t dil = g->dil[lead + a], pl = g->pad[lead + a];
    src[2 + a] = in;
    dst[2 + a] = out;
    wei[w++] = k;
    m->strides[a] = st;
    m->dilates[a] = dil - 1; /* oneDNN counts the gaps */
    m->pad_l[a] = pl;
    m->pad_r[a] = (out - 1) * st + (k - 1) * dil + 1 - in - pl;
  }
  const dnnl_format_tag_t wt = grouped ? gwei_tag[d - 1] : wei_tag[d - 1];
  if (dnnl_memory_desc_init_by_tag(&m->src, d + 2, src, dnnl_f32,
                                   data_tag[d - 1]) != dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->dst, d + 2, dst, dnnl_f32,
                                   data_tag[d - 1]) != dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->wei, w, wei, dnnl_f32, wt) !=
          dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->bias, 1, bias, dnnl_f32, dnnl_x) !=
          dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->src_any, d + 2, src, dnnl_f32,
                                   dnnl_format_tag_any) != dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->dst_any, d + 2, dst, dnnl_f32,
                                   dnnl_format_tag_any) != dnnl_success ||
      dnnl_memory_desc_init_by_tag(&m->wei_any, w, wei, dnnl_f32,
                                   dnnl_format_tag_any) != dnnl_success)
    return CPK__CONV_DECLINED;
  return CPK_OK;
}

/* The forward primitive descriptor (also the hint of both backward ones). */
static int forward_pd(conv_mds *m, int bias, dnnl_primitive_desc_t *pd) {
  dnnl_convolution_desc_t cd;
  if (dnnl_dilated_convolution_forward_desc_init(
          &cd, dnnl_forward_training, dnnl_convolution_direct, &m->src_any,
          &m->wei_any, bias ? &m->bias : NULL, &m->dst_any, m->strides,
          m->dilates, m->pad_l, m->pad_r) != dnnl_success ||
      dnnl_primitive_desc_create(pd, &cd, NULL, engine, NULL) != dnnl_success)
    return CPK__CONV_DECLINED;
  return CPK_OK;
}

/* One call's resources, released together. */
#define MAX_MEMS 8
typedef struct {
  dnnl_stream_t stream;
  dnnl_primitive_desc_t pd[2]; /* the forward one, the one run */
  dnnl_primitive_t prim;
  dnnl_memory_t mem[MAX_MEMS];
  void *buf[MAX_MEMS];
  int nmem, nbuf;
} call;

static void call_free(call *c) {
  for (int i = 0; i < c->nmem; i++)
    dnnl_memory_destroy(c->mem[i]);
  for (int i = 0; i < c->nbuf; i++)
    cpk__free(c->buf[i]);
  if (c->prim)
    dnnl_primitive_destroy(c->prim);
  for (int i = 0; i < 2; i++)
    if (c->pd[i])
      dnnl_primitive_desc_destroy(c->pd[i]);
  if (c->stream)
    dnnl_stream_destroy(c->stream);
}

static int fail(dnnl_status_t st, const char *what) {
  if (st == dnnl_out_of_memory)
    return cpk__fail(CPK_ENOMEM, "oneDNN: %s: out of memory", what);
  return cpk__fail(CPK_EIO, "oneDNN: %s failed (status %d)", what, (int)st);
}

/* A memory object of `md` over `data` (NULL: a new tracked buffer). */
static int memory_on(call *c, const dnnl_memory_desc_t *md, void *data,
                     dnnl_memory_t *out) {
  if (data == NULL) {
    const size_t bytes = dnnl_memory_desc_get_size(md);
    if ((data = cpk__malloc(bytes ? bytes : 1)) == NULL)
      return CPK_ENOMEM;
    c->buf[c->nbuf++] = data;
  }
  dnnl_status_t st = dnnl_memory_create(out, md, engine, data);
  if (st != dnnl_success)
    return fail(st, "dnnl_memory_create");
  c->mem[c->nmem++] = *out;
  return CPK_OK;
}

static int reorder(call *c, dnnl_memory_t from, dnnl_memory_t to) {
  const dnnl_memory_desc_t *a, *b;
  dnnl_primitive_desc_t rpd;
  dnnl_primitive_t r;
  dnnl_memory_get_memory_desc(from, &a);
  dnnl_memory_get_memory_desc(to, &b);
  dnnl_status_t st = dnnl_reorder_primitive_desc_create(&rpd, a, engine, b,
                                                         engine, NULL);
  if (st != dnnl_success)
    return fail(st, "reorder");
  st = dnnl_primitive_create(&r, rpd);
  dnnl_primitive_desc_destroy(rpd);
  if (st != dnnl_success)
    return fail(st, "reorder");
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  st = dnnl_primitive_execute(r, c->stream, 2, args);
  dnnl_primitive_destroy(r);
  return st == dnnl_success ? CPK_OK : fail(st, "reorder");
}

/* The argument `arg` of the primitive: the caller's C-order data, in the
 * layout the primitive asks for (a reordered copy when it differs); an
 * output is reordered back by finish_output. */
typedef struct {
  int arg;
  const dnnl_memory_desc_t *user; /* C order */
  void *data;
  int is_output;
  dnnl_memory_t user_mem, mem;
} operand;

#define OPERAND(a, md, ptr, out)                                               \
  { .arg = (a), .user = (md), .data = (void *)(ptr), .is_output = (out) }

static int bind(call *c, operand *o) {
  const dnnl_memory_desc_t *want =
      dnnl_primitive_desc_query_md(c->pd[1], dnnl_query_exec_arg_md, o->arg);
  int rc = memory_on(c, o->user, o->data, &o->user_mem);
  if (rc != CPK_OK)
    return rc;
  if (dnnl_memory_desc_equal(want, o->user)) {
    o->mem = o->user_mem;
    return CPK_OK;
  }
  if ((rc = memory_on(c, want, NULL, &o->mem)) != CPK_OK)
    return rc;
  return o->is_output ? CPK_OK : reorder(c, o->user_mem, o->mem);
}

/* Run c->pd[1] on the operands, then bring the outputs back to C order. */
static int run(call *c, operand *ops, int n) {
  dnnl_exec_arg_t args[4];
  dnnl_status_t st = dnnl_stream_create(&c->stream, engine,
                                        dnnl_stream_default_flags);
  if (st != dnnl_success)
    return fail(st, "dnnl_stream_create");
  int rc = CPK_OK;
  for (int i = 0; i < n && rc == CPK_OK; i++)
    rc = bind(c, &ops[i]);
  if (rc != CPK_OK)
    return rc;
  if ((st = dnnl_primitive_create(&c->prim, c->pd[1])) != dnnl_success)
    return fail(st, "dnnl_primitive_create");
  for (int i = 0; i < n; i++)
    args[i] = (dnnl_exec_arg_t){ops[i].arg, ops[i].mem};
  if ((st = dnnl_primitive_execute(c->prim, c->stream, n, args)) !=
      dnnl_success)
    return fail(st, "convolution");
  for (int i = 0; i < n && rc == CPK_OK; i++)
    if (ops[i].is_output && ops[i].mem != ops[i].user_mem)
      rc = reorder(c, ops[i].mem, ops[i].user_mem);
  if (rc == CPK_OK && (st = dnnl_stream_wait(c->stream)) != dnnl_success)
    rc = fail(st, "dnnl_stream_wait");
  return rc;
}

/* Where an output with beta != 0 is computed first: a tracked scratch
 * copy of n floats, combined by finish_beta; the output itself for
 * beta = 0. */
static float *output_for(float beta, int64_t n, float *out) {
  return beta == 0.0f ? out : cpk__malloc((size_t)n * sizeof(float));
}

/* out := beta * out + r (r = the scratch copy, freed), on success. */
static int finish_beta(int rc, float beta, int64_t n, float *r, float *out) {
  if (r == out)
    return rc;
  if (rc == CPK_OK) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++)
      out[i] = beta * out[i] + r[i];
  }
  cpk__free(r);
  return rc;
}

int cpk__dnnl_conv_apply(const cpk__conv *s, int64_t count, const float *x,
                         const float *w, const float *b, float beta,
                         float *y) {
  conv_mds m;
  call c = {0};
  if (!usable() || mds_of(s, count, &m) != CPK_OK ||
      forward_pd(&m, b != NULL, &c.pd[1]) != CPK_OK) {
    call_free(&c);
    return CPK__CONV_DECLINED;
  }
  const int64_t n = count * cpk__conv_dims_of(s, CPK_F32).ysz;
  float *r = output_for(beta, n, y);
  int rc = CPK_ENOMEM;
  if (r != NULL) {
    operand ops[4] = {OPERAND(DNNL_ARG_SRC, &m.src, x, 0),
                      OPERAND(DNNL_ARG_WEIGHTS, &m.wei, w, 0),
                      OPERAND(DNNL_ARG_DST, &m.dst, r, 1),
                      OPERAND(DNNL_ARG_BIAS, &m.bias, b, 0)};
    rc = finish_beta(run(&c, ops, b != NULL ? 4 : 3), beta, n, r, y);
  }
  call_free(&c);
  return rc;
}

/* c->pd[0] := the forward descriptor (the hint), c->pd[1] := the backward
 * one: for the data (weights = 0) or for the weights (weights = 1). */
static int backward_pd(conv_mds *m, int weights, call *c) {
  dnnl_convolution_desc_t cd;
  if (forward_pd(m, 0, &c->pd[0]) != CPK_OK)
    return CPK__CONV_DECLINED;
  const dnnl_status_t st =
      weights ? dnnl_dilated_convolution_backward_weights_desc_init(
                    &cd, dnnl_convolution_direct, &m->src_any, &m->wei_any,
                    NULL, &m->dst_any, m->strides, m->dilates, m->pad_l,
                    m->pad_r)
              : dnnl_dilated_convolution_backward_data_desc_init(
                    &cd, dnnl_convolution_direct, &m->src_any, &m->wei_any,
                    &m->dst_any, m->strides, m->dilates, m->pad_l, m->pad_r);
  if (st != dnnl_success ||
      dnnl_primitive_desc_create(&c->pd[1], &cd, NULL, engine, c->pd[0]) !=
          dnnl_success)
    return CPK__CONV_DECLINED;
  return CPK_OK;
}

/* The backward map for the data (weights = 0: a = dY, b = W, out = dX) or
 * for the weights (weights = 1: a = X, b = dY, out = dW), summed over the
 * count images: out := beta * out + the result. */
static int backward(const cpk__conv *s, int64_t count, int weights,
                    const float *a, const float *b, float beta, float *out) {
  conv_mds m;
  call c = {0};
  int rc = usable() ? mds_of(s, count, &m) : CPK__CONV_DECLINED;
  if (rc == CPK_OK)
    rc = backward_pd(&m, weights, &c);
  if (rc == CPK_OK) {
    const cpk__conv_dims d = cpk__conv_dims_of(s, CPK_F32);
    const int64_t n = weights ? d.wsz : count * d.xsz;
    float *r = output_for(beta, n, out);
    const operand data[3] = {OPERAND(DNNL_ARG_DIFF_DST, &m.dst, a, 0),
                             OPERAND(DNNL_ARG_WEIGHTS, &m.wei, b, 0),
                             OPERAND(DNNL_ARG_DIFF_SRC, &m.src, r, 1)};
    const operand wei[3] = {OPERAND(DNNL_ARG_SRC, &m.src, a, 0),
                            OPERAND(DNNL_ARG_DIFF_DST, &m.dst, b, 0),
                            OPERAND(DNNL_ARG_DIFF_WEIGHTS, &m.wei, r, 1)};
    operand ops[3];
    memcpy(ops, weights ? wei : data, sizeof ops);
    rc = r == NULL ? CPK_ENOMEM
                   : finish_beta(run(&c, ops, 3), beta, n, r, out);
  }
  call_free(&c);
  return rc;
}

int cpk__dnnl_conv_adjoint(const cpk__conv *s, int64_t count, const float *y,
                           const float *w, float beta, float *x) {
  return backward(s, count, 0, y, w, beta, x);
}

int cpk__dnnl_conv_weight_grad(const cpk__conv *s, int64_t n, const float *x,
                               const float *y, float beta, float *dw) {
  return backward(s, n, 1, x, y, beta, dw);
}
