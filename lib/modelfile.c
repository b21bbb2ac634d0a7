/*
 * modelfile.c: the model-file parser (contract.md, "Model files"): UTF-8
 * text, one layer per line, `#` starts a comment, blank lines are ignored,
 * a line is `name positional... key=value...`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define MAX_WORDS 64

/* Split `line` in place at blanks, dropping a trailing comment. */
static int split_words(char *line, char **words) {
  int n = 0;
  char *hash = strchr(line, '#');
  if (hash)
    *hash = '\0';
  for (char *p = line; *p;) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f')
      p++;
    if (*p == '\0')
      break;
    if (n == MAX_WORDS)
      return -1;
    words[n++] = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\v' &&
           *p != '\f')
      p++;
    if (*p)
      *p++ = '\0';
  }
  return n;
}

static int parse_line(cpk_model *m, char *line, const char *where) {
  char *words[MAX_WORDS];
  int n = split_words(line, words);
  if (n < 0)
    return cpk__fail(CPK_EFORMAT, "%s: more than %d words on one line", where,
                     MAX_WORDS);
  if (n == 0)
    return CPK_OK;
  return cpk__model_append(m, n, words, where);
}

int cpk_model_parse(cpk_model **out, const char *text, const char *name) {
  cpk_model *m;
  int rc = cpk_model_new(&m);
  *out = NULL;
  if (rc != CPK_OK)
    return rc;
  snprintf(m->source, sizeof m->source, "%s", name);
  char *copy = cpk__strdup(text);
  if (copy == NULL) {
    cpk_model_free(m);
    return CPK_ENOMEM;
  }
  int lineno = 0;
  char *line = copy;
  /* A UTF-8 byte order mark (written by some editors) is not text. */
  if (strncmp(line, "\xEF\xBB\xBF", 3) == 0)
    line += 3;
  for (char *next; line != NULL; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    char where[160];
    snprintf(where, sizeof where, "%s:%d", name, ++lineno);
    if ((rc = parse_line(m, line, where)) != CPK_OK)
      break;
  }
  free(copy);
  if (rc == CPK_OK && m->nlayers == 0)
    rc = cpk__fail(CPK_EFORMAT, "%s: no layer lines", name);
  if (rc != CPK_OK) {
    cpk_model_free(m);
    return rc;
  }
  *out = m;
  return CPK_OK;
}

int cpk_model_load(cpk_model **out, const char *path) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return cpk__fail(CPK_EIO, "cannot open model file '%s': %s", path,
                     strerror(errno));
  size_t cap = 4096, len = 0;
  char *text = malloc(cap);
  int rc = CPK_OK;
  while (text != NULL) {
    len += fread(text + len, 1, cap - len - 1, f);
    if (len < cap - 1)
      break;
    char *grown = cap > ((size_t)64 << 20) ? NULL : realloc(text, cap * 2);
    if (grown == NULL) {
      rc = cpk__fail(CPK_EFORMAT, "model file '%s' is larger than 64 MiB",
                     path);
      break;
    }
    text = grown;
    cap *= 2;
  }
  if (text == NULL)
    rc = cpk__fail(CPK_ENOMEM, "out of memory reading '%s'", path);
  else if (rc == CPK_OK && ferror(f))
    rc = cpk__fail(CPK_EIO, "cannot read model file '%s': %s", path,
                   strerror(errno));
  else if (rc == CPK_OK && memchr(text, '\0', len) != NULL)
    rc = cpk__fail(CPK_EFORMAT,
                   "model file '%s' contains a NUL byte (not a text file)",
                   path);
  fclose(f);
  if (rc == CPK_OK) {
    text[len] = '\0';
    rc = cpk_model_parse(out, text, path);
  }
  free(text);
  return rc;
}

int cpk_model_add_line(cpk_model *m, const char *line) {
  char *copy = cpk__strdup(line);
  if (copy == NULL)
    return CPK_ENOMEM;
  if (strchr(copy, '\n') != NULL) {
    free(copy);
    return cpk__fail(CPK_EINVAL, "cpk_model_add_line: one line expected");
  }
  char where[192];
  snprintf(where, sizeof where, "%s:%d", m->source, m->nlayers + 1);
  int before = m->nlayers;
  int rc = parse_line(m, copy, where);
  free(copy);
  if (rc == CPK_OK && m->nlayers == before)
    rc = cpk__fail(CPK_EINVAL, "cpk_model_add_line: the line holds no layer");
  return rc;
}
