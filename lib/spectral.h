/*
 * spectral.h: helpers shared by the spectral tools (lanczos.c, trace.c,
 * density.c) and the Kronecker-factored inverses (kron_inverse.c). The
 * public API is in curvpack.h, section "spectra". Not installed.
 */
#ifndef CPK_SPECTRAL_H
#define CPK_SPECTRAL_H

#include <lapacke.h>
#include <stdint.h>

#include "curvpack.h"
#include "internal.h"
#include "rng.h"

/* Fail with CPK_EINVAL unless `op` is usable: non-NULL, apply set, dim >= 1.
 * `who` starts the message ("lanczos"). */
int cpk__op_check(const cpk_operator *op, const char *who);

/* out := A in for k vectors [k, P]. An operator failure keeps its status
 * (a positive or unknown one becomes CPK_EINVAL) and its message, prefixed
 * "WHO: operator failed at STAGE INDEX"; a non-finite entry of `out` fails
 * with CPK_ENONFINITE: "WHO: operator returned a non-finite value at STAGE
 * INDEX (vector j, entry i)". Adds k to *matvecs when matvecs != NULL. */
int cpk__op_apply(const cpk_operator *op, int64_t k, const double *in,
                  double *out, const char *who, const char *stage,
                  int64_t index, int64_t *matvecs);

/* Turn a LAPACKE info code of `routine` into a status and message:
 * info < 0 is an illegal argument (or LAPACKE's memory error), info > 0 is
 * explained by `positive` (a printf format with one %d for info), e.g.
 * "%d off-diagonal elements did not converge". Returns the status. */
int cpk__lapack_fail(const char *who, const char *routine, int info,
                     const char *positive);

/* x[i] := +-1 with equal probability (64 draws per generator call). */
void cpk__rademacher(cpk__rng *r, int64_t n, double *x);
/* x[i] := standard normal. */
void cpk__gaussian(cpk__rng *r, int64_t n, double *x);

/* w := (I - V^T V) w for the rows of V [nv, n], assumed orthonormal, by
 * classical Gram-Schmidt with a second pass when the first one cancelled
 * more than 1 - 1/sqrt(2) of the norm (Daniel, Gragg, Kaufman, Stewart
 * 1976: "twice is enough"). h [nv] (or NULL) receives the summed
 * coefficients; scratch holds nv doubles. */
void cpk__orth(int64_t nv, int64_t n, const double *v, double *w, double *h,
               double *scratch);

/* Euclidean norm and dot product of length-n vectors. */
double cpk__nrm2(int64_t n, const double *x);
double cpk__dot(int64_t n, const double *x, const double *y);

/* Eigen-decomposition of the symmetric tridiagonal matrix with diagonal
 * alpha[m] and off-diagonal beta[m-1] (LAPACK dstev): theta[m] ascending,
 * z [m, m] column major (column i is the unit eigenvector of theta[i]).
 * work holds at least 3m doubles. */
int cpk__tridiag_eig(int64_t m, const double *alpha, const double *beta,
                     double *theta, double *z, double *work, const char *who);

/* The `top` largest eigenpairs of the same tridiagonal matrix (LAPACK
 * dstevr on a subset: bisection and inverse iteration, O(m top) rather than
 * O(m^3)): theta[top] ascending, z [m, top] column major (column j belongs
 * to theta[j]), and *theta_min the smallest eigenvalue. work holds 23 m
 * doubles, iwork 10 m + 2 top ints. */
int cpk__tridiag_top(int64_t m, const double *alpha, const double *beta,
                     int64_t top, double *theta, double *z, double *theta_min,
                     double *work, lapack_int *iwork, const char *who);

/* Eigendecomposition of the symmetric mat [d, d] in place (LAPACK dsyevd,
 * lower triangle in column-major terms): w [d] ascending eigenvalues, mat
 * row i the unit eigenvector of w[i] (read row major). `name` says what the
 * matrix is in messages ("output factor A"). */
int cpk__sym_eig(int64_t d, double *mat, double *w, const char *who,
                 const char *name);

#endif /* CPK_SPECTRAL_H */
