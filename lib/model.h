/* model.h: the sequential model (private). */
#ifndef CPK_MODEL_H
#define CPK_MODEL_H

#include "layer.h"

struct cpk_model {
  char source[128];      /* file name for messages ("<api>" when built) */
  int nlayers, cap;
  cpk__layer **layers;
  int built;             /* cpk_model_build succeeded */
  cpk_dtype dtype;
  int in_ndim;
  int64_t in_shape[CPK_MAX_DIMS];
  int nparams;           /* every parameter and buffer, in state_dict order */
  struct cpk__model_param {
    char name[40];       /* "0.weight" */
    cpk__layer *layer;
    int slot;            /* index into layer->params */
  } *params;
};

/* Create a layer from the words of one model-file line (words[0] is the
 * name) and append it. `where` is "FILE:LINE" for messages. */
int cpk__model_append(cpk_model *m, int nwords, char **words,
                      const char *where);

#endif
