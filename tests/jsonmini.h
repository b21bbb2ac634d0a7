/* jsonmini.h: a small strict JSON reader for the tests (RFC 8259 values:
 * objects, arrays, strings without escapes beyond \" \\ \/ \n \t, numbers,
 * true, false, null). */
#ifndef CPK_JSONMINI_H
#define CPK_JSONMINI_H

typedef enum {
  JM_NULL,
  JM_BOOL,
  JM_NUMBER,
  JM_STRING,
  JM_ARRAY,
  JM_OBJECT
} jm_type;

typedef struct jm_value {
  jm_type type;
  double number;          /* JM_NUMBER, JM_BOOL (0/1) */
  char *string;           /* JM_STRING */
  int count;              /* JM_ARRAY, JM_OBJECT */
  char **keys;            /* JM_OBJECT */
  struct jm_value *items; /* JM_ARRAY, JM_OBJECT */
} jm_value;

/* Parse exactly one value spanning all of `text` (surrounding whitespace
 * allowed). Returns 0, or -1 with *where set to the offending offset. */
int jm_parse(const char *text, jm_value *out, long *where);
void jm_free(jm_value *v);
/* Member `key` of an object, or NULL. */
const jm_value *jm_get(const jm_value *obj, const char *key);

#endif
