/* args.c: parse and bind the arguments of a model-file line. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "internal.h"

static int parse_int(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0')
    return -1;
  *out = v;
  return 0;
}

static int parse_value(const cpk__arg_spec *a, const char *text,
                       cpk__arg_value *v, const char *where) {
  char *end;
  memset(v, 0, sizeof *v);
  switch (a->type) {
  case CPK__ARG_INT:
    v->nints = 1;
    if (parse_int(text, &v->ints[0]) != 0)
      return cpk__fail(CPK_EFORMAT, "%s: %s='%s' is not an integer", where,
                       a->name, text);
    return CPK_OK;
  case CPK__ARG_FLOAT:
    /* Underflow (errno = ERANGE, a tiny result) is fine; overflow is inf. */
    v->f = strtod(text, &end);
    if (end == text || *end != '\0')
      return cpk__fail(CPK_EFORMAT, "%s: %s='%s' is not a number", where,
                       a->name, text);
    if (!isfinite(v->f))
      return cpk__fail(CPK_EFORMAT, "%s: %s='%s' is not a finite number",
                       where, a->name, text);
    return CPK_OK;
  case CPK__ARG_BOOL:
    if (strcmp(text, "true") == 0 || strcmp(text, "True") == 0)
      v->b = 1;
    else if (strcmp(text, "false") == 0 || strcmp(text, "False") == 0)
      v->b = 0;
    else
      return cpk__fail(CPK_EFORMAT, "%s: %s='%s' is not true or false", where,
                       a->name, text);
    return CPK_OK;
  case CPK__ARG_PADDING:
    if (strcmp(text, "same") == 0 || strcmp(text, "valid") == 0) {
      strcpy(v->word, text);
      return CPK_OK;
    }
    /* a tuple of integers, as below */
    __attribute__((fallthrough));
  case CPK__ARG_INTS: {
    /* Integers separated by single commas: "3" or "3,3"; no empty item. */
    char buf[128];
    if (strlen(text) >= sizeof buf)
      return cpk__fail(CPK_EFORMAT, "%s: %s='%.32s...' is too long", where,
                       a->name, text);
    strcpy(buf, text);
    for (char *tok = buf;;) {
      char *comma = strchr(tok, ',');
      if (comma)
        *comma = '\0';
      if (v->nints == CPK_MAX_DIMS || parse_int(tok, &v->ints[v->nints]) != 0)
        return cpk__fail(CPK_EFORMAT,
                         "%s: %s='%s' is not an integer or a tuple like 3,3",
                         where, a->name, text);
      v->nints++;
      if (comma == NULL)
        break;
      tok = comma + 1;
    }
    return CPK_OK;
  }
  }
  return CPK_OK;
}

static int find_spec(const cpk__arg_spec *spec, int nspec, const char *name,
                     size_t len) {
  for (int i = 0; i < nspec; i++)
    if (strlen(spec[i].name) == len && strncmp(spec[i].name, name, len) == 0)
      return i;
  return -1;
}

static int unknown_key(const cpk__arg_spec *spec, int nspec, const char *word,
                       size_t len, const char *where) {
  char names[512] = "";
  size_t pos = 0;
  for (int i = 0; i < nspec && pos < sizeof names; i++)
    pos += (size_t)snprintf(names + pos, sizeof names - pos, "%s%s",
                            i ? ", " : "", spec[i].name);
  return cpk__fail(CPK_EFORMAT, "%s: unknown argument '%.*s' (expected %s)",
                   where, (int)len, word, nspec ? names : "no arguments");
}

int cpk__args_bind(const cpk__arg_spec *spec, int nspec, int nwords,
                   char **words, cpk__arg_value *vals, const char *where) {
  int rc, next_positional = 0, seen_key = 0;
  memset(vals, 0, (size_t)nspec * sizeof *vals);
  for (int w = 0; w < nwords; w++) {
    const char *eq = strchr(words[w], '=');
    int slot;
    const char *text;
    if (eq == NULL) {
      if (seen_key)
        return cpk__fail(CPK_EFORMAT,
                         "%s: positional argument '%s' after a key=value one",
                         where, words[w]);
      if (next_positional >= nspec)
        return cpk__fail(CPK_EFORMAT,
                         "%s: too many arguments ('%s' is argument %d, at most "
                         "%d are taken)",
                         where, words[w], w + 1, nspec);
      slot = next_positional++;
      text = words[w];
    } else {
      seen_key = 1;
      slot = find_spec(spec, nspec, words[w], (size_t)(eq - words[w]));
      if (slot < 0)
        return unknown_key(spec, nspec, words[w], (size_t)(eq - words[w]),
                           where);
      if (vals[slot].given)
        return cpk__fail(CPK_EFORMAT, "%s: argument '%s' given twice", where,
                         spec[slot].name);
      text = eq + 1;
    }
    if ((rc = parse_value(&spec[slot], text, &vals[slot], where)) != CPK_OK)
      return rc;
    vals[slot].given = 1;
  }
  for (int i = 0; i < nspec; i++) {
    if (vals[i].given)
      continue;
    if (spec[i].def == NULL)
      return cpk__fail(CPK_EFORMAT, "%s: missing argument '%s'", where,
                       spec[i].name);
    if ((rc = parse_value(&spec[i], spec[i].def, &vals[i], where)) != CPK_OK)
      return rc;
  }
  return CPK_OK;
}

int cpk__args_tuple(const cpk__arg_value *v, const char *name, int dims,
                    int64_t *out, const char *where) {
  if (v->nints != 1 && v->nints != dims)
    return cpk__fail(CPK_EFORMAT,
                     "%s: %s has %d values, expected 1 or %d", where, name,
                     v->nints, dims);
  for (int i = 0; i < dims; i++)
    out[i] = v->ints[v->nints == 1 ? 0 : i];
  return CPK_OK;
}
