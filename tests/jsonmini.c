/* jsonmini.c: see jsonmini.h. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "jsonmini.h"

typedef struct {
  const char *s;
  long at;
} reader;

static void ws(reader *r) {
  while (r->s[r->at] == ' ' || r->s[r->at] == '\t' || r->s[r->at] == '\n' ||
         r->s[r->at] == '\r')
    r->at++;
}

static int value(reader *r, jm_value *v);

static int string(reader *r, char **out) {
  if (r->s[r->at] != '"')
    return -1;
  long start = ++r->at;
  size_t len = 0;
  char *buf = malloc(strlen(r->s + start) + 1);
  while (r->s[r->at] != '"') {
    char c = r->s[r->at++];
    if (c == '\0' || (unsigned char)c < 0x20) {
      free(buf);
      return -1;
    }
    if (c == '\\') {
      c = r->s[r->at++];
      c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
      if (c != '"' && c != '\\' && c != '/' && c != '\n' && c != '\t') {
        free(buf);
        return -1;
      }
    }
    buf[len++] = c;
  }
  r->at++;
  buf[len] = '\0';
  *out = buf;
  return 0;
}

static int number(reader *r, jm_value *v) {
  const char *p = r->s + r->at;
  /* JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
  const char *q = p;
  if (*q == '-')
    q++;
  if (*q == '0')
    q++;
  else if (isdigit((unsigned char)*q))
    while (isdigit((unsigned char)*q))
      q++;
  else
    return -1;
  if (*q == '.') {
    q++;
    if (!isdigit((unsigned char)*q))
      return -1;
    while (isdigit((unsigned char)*q))
      q++;
  }
  if (*q == 'e' || *q == 'E') {
    q++;
    if (*q == '+' || *q == '-')
      q++;
    if (!isdigit((unsigned char)*q))
      return -1;
    while (isdigit((unsigned char)*q))
      q++;
  }
  v->type = JM_NUMBER;
  v->number = strtod(p, NULL);
  r->at += q - p;
  return 0;
}

static int literal(reader *r, const char *word) {
  size_t n = strlen(word);
  if (strncmp(r->s + r->at, word, n) != 0)
    return -1;
  r->at += (long)n;
  return 0;
}

static int container(reader *r, jm_value *v, int object) {
  const char close = object ? '}' : ']';
  v->type = object ? JM_OBJECT : JM_ARRAY;
  r->at++;
  ws(r);
  if (r->s[r->at] == close) {
    r->at++;
    return 0;
  }
  for (;;) {
    v->items = realloc(v->items, (size_t)(v->count + 1) * sizeof *v->items);
    memset(&v->items[v->count], 0, sizeof *v->items);
    if (object) {
      v->keys = realloc(v->keys, (size_t)(v->count + 1) * sizeof *v->keys);
      v->keys[v->count] = NULL;
      ws(r);
      if (string(r, &v->keys[v->count]) != 0)
        return v->count++, -1;
      ws(r);
      if (r->s[r->at++] != ':')
        return v->count++, -1;
    }
    int rc = value(r, &v->items[v->count++]);
    if (rc != 0)
      return rc;
    ws(r);
    char c = r->s[r->at++];
    if (c == close)
      return 0;
    if (c != ',')
      return -1;
  }
}

static int value(reader *r, jm_value *v) {
  ws(r);
  char c = r->s[r->at];
  if (c == '{' || c == '[')
    return container(r, v, c == '{');
  if (c == '"') {
    v->type = JM_STRING;
    return string(r, &v->string);
  }
  if (c == 't' || c == 'f') {
    v->type = JM_BOOL;
    v->number = c == 't';
    return literal(r, c == 't' ? "true" : "false");
  }
  if (c == 'n') {
    v->type = JM_NULL;
    return literal(r, "null");
  }
  return number(r, v);
}

int jm_parse(const char *text, jm_value *out, long *where) {
  reader r = {text, 0};
  memset(out, 0, sizeof *out);
  int rc = value(&r, out);
  ws(&r);
  if (rc == 0 && text[r.at] != '\0')
    rc = -1;
  if (rc != 0 && where)
    *where = r.at;
  return rc;
}

void jm_free(jm_value *v) {
  for (int i = 0; i < v->count; i++) {
    jm_free(&v->items[i]);
    if (v->keys)
      free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->string);
  memset(v, 0, sizeof *v);
}

const jm_value *jm_get(const jm_value *obj, const char *key) {
  if (obj->type != JM_OBJECT)
    return NULL;
  for (int i = 0; i < obj->count; i++)
    if (obj->keys[i] && strcmp(obj->keys[i], key) == 0)
      return &obj->items[i];
  return NULL;
}
