/*
 * args.h: binding the words of a model-file line to a layer's arguments.
 * A line is `name positional... key=value...` with the argument names,
 * order and defaults of the PyTorch class (contract.md); positional words
 * fill the arguments in order, and any argument may also be given by key.
 */
#ifndef CPK_ARGS_H
#define CPK_ARGS_H

#include <stdint.h>

#include "curvpack.h"

typedef enum {
  CPK__ARG_INT,     /* 784 */
  CPK__ARG_FLOAT,   /* 0.01 */
  CPK__ARG_BOOL,    /* true | false */
  CPK__ARG_INTS,    /* 3 or 3,3 (a tuple) */
  CPK__ARG_PADDING  /* like INTS, or the words same | valid */
} cpk__arg_type;

typedef struct cpk__arg_spec {
  const char *name;
  cpk__arg_type type;
  const char *def; /* default as it would be written; NULL: required */
} cpk__arg_spec;

typedef struct cpk__arg_value {
  int given;                   /* set on the line (not defaulted) */
  int64_t ints[CPK_MAX_DIMS];  /* INT: ints[0]; INTS/PADDING: the tuple */
  int nints;
  double f;                    /* FLOAT */
  int b;                       /* BOOL */
  char word[8];                /* PADDING given as a word, else "" */
} cpk__arg_value;

/* Bind `nwords` words (after the layer name) to `spec`, filling `vals`
 * (nspec entries). `where` ("model.txt:3: linear") prefixes messages.
 * Fails with CPK_EFORMAT on a bad value, unknown key, duplicate or missing
 * argument. */
int cpk__args_bind(const cpk__arg_spec *spec, int nspec, int nwords,
                   char **words, cpk__arg_value *vals, const char *where);

/* Expand a tuple argument to `dims` entries (one value repeats). Fails with
 * CPK_EFORMAT naming the argument when the tuple has another length. */
int cpk__args_tuple(const cpk__arg_value *v, const char *name, int dims,
                    int64_t *out, const char *where);

#endif
