/*
 * conv_box.h: index arithmetic shared by the unfolding kernels
 * (im2col.inc), independent of the float type.
 */
#ifndef CPK_KERNELS_CONV_BOX_H
#define CPK_KERNELS_CONV_BOX_H

#include <stdint.h>

#include "ops.h"

/* What a walk over the index map i = o*s + off does with the input-grid
 * element in[i] and the output-grid element out[o]. */
typedef enum {
  CPK__WALK_GATHER,      /* out[o] := in[i] */
  CPK__WALK_SCATTER_ADD, /* in[i] += out[o] */
  CPK__WALK_SCATTER      /* in[i] := out[o] */
} cpk__walk;

/* For one kernel offset k: per axis a, off[a] = k[a]*d[a] - p[a], and the
 * output positions o in [lo[a], hi[a]) are those with
 * 0 <= o*s[a] + off[a] < in[a] (an empty range has lo = hi). */
typedef struct {
  int64_t off[3], lo[3], hi[3];
} cpk__conv_box;

static inline void cpk__conv_box_of(const cpk__im2col_geom *g, const int64_t *k,
                                    cpk__conv_box *b) {
  for (int a = 0; a < 3; a++) {
    const int64_t s = g->stride[a], off = k[a] * g->dil[a] - g->pad[a];
    /* first o with o*s + off >= 0; first o with o*s + off >= in (no
     * division for s = 1: this runs once per row of every unfolding) */
    int64_t lo = off >= 0 ? 0 : s == 1 ? -off : (-off + s - 1) / s;
    int64_t hi = g->in[a] - off <= 0 ? 0
                 : s == 1            ? g->in[a] - off
                                     : (g->in[a] - off + s - 1) / s;
    lo = lo < g->out[a] ? lo : g->out[a];
    hi = hi < g->out[a] ? hi : g->out[a];
    b->off[a] = off;
    b->lo[a] = lo;
    b->hi[a] = hi > lo ? hi : lo;
  }
}

/* prod(k), prod(in), prod(out). */
static inline int64_t cpk__conv_kvol(const cpk__im2col_geom *g) {
  return g->k[0] * g->k[1] * g->k[2];
}
static inline int64_t cpk__conv_lin(const cpk__im2col_geom *g) {
  return g->in[0] * g->in[1] * g->in[2];
}
static inline int64_t cpk__conv_lout(const cpk__im2col_geom *g) {
  return g->out[0] * g->out[1] * g->out[2];
}

#endif /* CPK_KERNELS_CONV_BOX_H */
