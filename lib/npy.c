/*
 * npy.c: reading and writing NumPy .npy files.
 *
 * The format (numpy.lib.format), versions 1.0, 2.0 and 3.0:
 *
 *   offset 0   magic "\x93NUMPY"
 *   offset 6   major and minor version bytes: 1.0, 2.0 or 3.0
 *   offset 8   header length HLEN, little-endian: uint16 for 1.0,
 *              uint32 for 2.0 and 3.0
 *   then       the header, HLEN bytes: a Python dict literal, latin-1 text
 *              (1.0, 2.0) or UTF-8 (3.0), such as
 *                {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *              padded with spaces and ended by '\n'. NumPy pads so that the
 *              data starts at a multiple of 64 bytes; readers must not rely
 *              on it (older writers used 16).
 *   then       the data: prod(shape) elements of dtype 'descr', in C order or
 *              (fortran_order True) Fortran order, in the byte order that
 *              'descr' names ('<' little, '>' big, '=' and '|' native).
 *
 * The reader takes the dict apart with a small tokenizer for the subset of
 * Python literal syntax that can appear in it (strings, integers, True and
 * False, tuples, punctuation); keys may come in any order. It accepts the
 * dtypes float32, float64, int64 and int32 in either byte order and returns
 * a C-order tensor in native (little-endian) byte order. Everything else is
 * CPK_EFORMAT with a message naming the file: the file must hold exactly the
 * data its header describes.
 *
 * The writer writes what np.save writes for a C-contiguous little-endian
 * array, byte for byte: the keys sorted, NumPy's spare spaces after the dict
 * (21 minus the digits of the first extent, so the header can grow in place),
 * then padding to 64 bytes. Version 2.0 only if the header exceeds 65535
 * bytes. It writes a temporary file beside the target and renames it.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64
#define NPY_GROWTH_DIGITS 21 /* numpy.lib.format.GROWTH_AXIS_MAX_DIGITS */

static int host_is_big_endian(void) {
  const uint16_t one = 1;
  unsigned char first;
  memcpy(&first, &one, 1);
  return first == 0;
}

/* Copy n elements of `size` bytes, reversing the bytes of each if `swap`. */
static void copy_elements(unsigned char *dst, const unsigned char *src,
                          size_t n, size_t size, int swap) {
  if (!swap) {
    memcpy(dst, src, n * size);
    return;
  }
  for (size_t i = 0; i < n; i++)
    for (size_t b = 0; b < size; b++)
      dst[i * size + b] = src[i * size + size - 1 - b];
}

/* ================================================================ tokenizer */

typedef enum {
  TOK_END,    /* end of the header text */
  TOK_PUNCT,  /* one of { } ( ) [ ] : , */
  TOK_STRING, /* '...' or "...": text/len is the content between the quotes */
  TOK_INT,    /* optional sign and decimal digits */
  TOK_NAME    /* identifier: True, False, None, ... */
} tok_kind;

typedef struct {
  tok_kind kind;
  const char *text; /* TOK_STRING: content; otherwise the token itself */
  size_t len;
  char punct;         /* TOK_PUNCT */
  int negative;       /* TOK_INT: had a '-' sign */
  uint64_t magnitude; /* TOK_INT: absolute value, if !too_big */
  int too_big;        /* TOK_INT: does not fit in 64 bits */
} token;

typedef struct {
  const char *p, *end;
  const char *name; /* file name, for messages */
  int py2_longs;    /* accept Python 2 long suffixes ("3L"), as NumPy does
                       for versions 1.0 and 2.0 */
} lexer;

static int lex_fail(const lexer *lx, const char *what) {
  return cpk__fail(CPK_EFORMAT, "'%s': malformed .npy header: %s", lx->name,
                   what);
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static int is_ident(char c, int first) {
  return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (!first && c >= '0' && c <= '9');
}

static int lex_string(lexer *lx, token *tok) {
  char quote = *lx->p++;
  const char *start = lx->p;
  while (lx->p < lx->end && *lx->p != quote) {
    if (*lx->p == '\n')
      break;
    if (*lx->p == '\\' && lx->p + 1 < lx->end)
      lx->p++;
    lx->p++;
  }
  if (lx->p >= lx->end || *lx->p != quote)
    return lex_fail(lx, "unterminated string");
  tok->kind = TOK_STRING;
  tok->text = start;
  tok->len = (size_t)(lx->p - start);
  lx->p++;
  return CPK_OK;
}

static int lex_int(lexer *lx, token *tok) {
  const char *start = lx->p;
  tok->kind = TOK_INT;
  tok->negative = *lx->p == '-';
  if (*lx->p == '-' || *lx->p == '+')
    lx->p++;
  const char *digits = lx->p;
  tok->magnitude = 0;
  tok->too_big = 0;
  while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
    unsigned d = (unsigned)(*lx->p - '0');
    if (tok->magnitude > (UINT64_MAX - d) / 10)
      tok->too_big = 1;
    else
      tok->magnitude = tok->magnitude * 10 + d;
    lx->p++;
  }
  size_t ndigits = (size_t)(lx->p - digits);
  tok->text = start;
  tok->len = (size_t)(lx->p - start);
  if (ndigits == 0)
    return lex_fail(lx, "sign without digits");
  /* Python forbids leading zeros ("007") except in zero itself ("00"). */
  if (digits[0] == '0' && tok->magnitude != 0)
    return lex_fail(lx, "integer with leading zeros");
  if (lx->py2_longs && lx->p < lx->end && (*lx->p == 'L' || *lx->p == 'l'))
    lx->p++;
  if (lx->p < lx->end && (is_ident(*lx->p, 0) || *lx->p == '.'))
    return lex_fail(lx, "extents must be plain decimal integers");
  return CPK_OK;
}

/* Read the next token; a character that cannot start one is an error. */
static int next_token(lexer *lx, token *tok) {
  while (lx->p < lx->end && is_space(*lx->p))
    lx->p++;
  memset(tok, 0, sizeof *tok);
  if (lx->p >= lx->end) {
    tok->kind = TOK_END;
    return CPK_OK;
  }
  char c = *lx->p;
  if (strchr("{}()[]:,", c) != NULL && c != '\0') {
    tok->kind = TOK_PUNCT;
    tok->punct = c;
    tok->text = lx->p++;
    tok->len = 1;
    return CPK_OK;
  }
  if (c == '\'' || c == '"')
    return lex_string(lx, tok);
  if (c == '-' || c == '+' || (c >= '0' && c <= '9'))
    return lex_int(lx, tok);
  if (is_ident(c, 1)) {
    tok->kind = TOK_NAME;
    tok->text = lx->p;
    while (lx->p < lx->end && is_ident(*lx->p, 0))
      lx->p++;
    tok->len = (size_t)(lx->p - tok->text);
    return CPK_OK;
  }
  char what[64];
  snprintf(what, sizeof what, "unexpected character 0x%02x",
           (unsigned)(unsigned char)c);
  return lex_fail(lx, what);
}

/* Describe a token for a message, with unprintable bytes shown as '?'. */
static const char *describe(const token *tok, char *buf, size_t cap) {
  char text[40];
  size_t n = tok->len < sizeof text - 4 ? tok->len : sizeof text - 4;
  for (size_t i = 0; i < n; i++)
    text[i] = isprint((unsigned char)tok->text[i]) ? tok->text[i] : '?';
  strcpy(text + n, n < tok->len ? "..." : "");
  switch (tok->kind) {
  case TOK_END:
    snprintf(buf, cap, "the end of the header");
    break;
  case TOK_STRING:
    snprintf(buf, cap, "string '%s'", text);
    break;
  default:
    snprintf(buf, cap, "'%s'", text);
    break;
  }
  return buf;
}

static int expected(const lexer *lx, const char *what, const token *found) {
  char buf[64];
  return cpk__fail(CPK_EFORMAT,
                   "'%s': malformed .npy header: expected %s, found %s",
                   lx->name, what, describe(found, buf, sizeof buf));
}

static int is_punct(const token *tok, char c) {
  return tok->kind == TOK_PUNCT && tok->punct == c;
}

static int token_is(const token *tok, const char *s) {
  return tok->len == strlen(s) && memcmp(tok->text, s, tok->len) == 0;
}

/* =================================================================== header */

typedef struct {
  int have_descr, have_fortran, have_shape;
  token descr; /* the descr string */
  int fortran_order;
  int ndim; /* may exceed CPK_MAX_DIMS; only the first CPK_MAX_DIMS stored */
  int64_t shape[CPK_MAX_DIMS];
} npy_header;

static int parse_descr(lexer *lx, npy_header *h) {
  token tok;
  int rc = next_token(lx, &tok);
  if (rc != CPK_OK)
    return rc;
  if (is_punct(&tok, '[') || is_punct(&tok, '('))
    return cpk__fail(CPK_EFORMAT,
                     "'%s': structured or subarray dtypes are not supported "
                     "(expected a plain float32, float64, int64 or int32 "
                     "descr such as '<f4')",
                     lx->name);
  if (tok.kind != TOK_STRING)
    return expected(lx, "a dtype string after 'descr'", &tok);
  h->descr = tok;
  h->have_descr = 1;
  return CPK_OK;
}

static int parse_fortran(lexer *lx, npy_header *h) {
  token tok;
  char buf[64];
  int rc = next_token(lx, &tok);
  if (rc != CPK_OK)
    return rc;
  if (tok.kind == TOK_NAME && token_is(&tok, "True"))
    h->fortran_order = 1;
  else if (tok.kind == TOK_NAME && token_is(&tok, "False"))
    h->fortran_order = 0;
  else
    return cpk__fail(CPK_EFORMAT,
                     "'%s': fortran_order must be True or False, found %s",
                     lx->name, describe(&tok, buf, sizeof buf));
  h->have_fortran = 1;
  return CPK_OK;
}

/* Store one extent of the shape tuple. */
static int add_extent(lexer *lx, npy_header *h, const token *tok) {
  char buf[64];
  if (tok->kind != TOK_INT)
    return expected(lx, "an integer extent in 'shape'", tok);
  if ((tok->too_big || tok->magnitude > (uint64_t)INT64_MAX) &&
      tok->negative)
    return cpk__fail(CPK_EFORMAT, "'%s': negative extent %s in 'shape'",
                     lx->name, describe(tok, buf, sizeof buf));
  if (tok->too_big || tok->magnitude > (uint64_t)INT64_MAX)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': shape extent %s does not fit in 64 bits",
                     lx->name, describe(tok, buf, sizeof buf));
  if (h->ndim < CPK_MAX_DIMS)
    h->shape[h->ndim] = tok->negative ? -(int64_t)tok->magnitude
                                      : (int64_t)tok->magnitude;
  h->ndim++;
  return CPK_OK;
}

/* shape: "()" or "(a,)" or "(a, b, ...)" with an optional trailing comma. */
static int parse_shape(lexer *lx, npy_header *h) {
  token tok;
  int rc, trailing_comma = 0;
  CPK__TRY(rc, next_token(lx, &tok), out);
  if (!is_punct(&tok, '('))
    return expected(lx, "a tuple after 'shape'", &tok);
  h->ndim = 0;
  CPK__TRY(rc, next_token(lx, &tok), out);
  while (!is_punct(&tok, ')')) {
    CPK__TRY(rc, add_extent(lx, h, &tok), out);
    CPK__TRY(rc, next_token(lx, &tok), out);
    trailing_comma = is_punct(&tok, ',');
    if (trailing_comma)
      CPK__TRY(rc, next_token(lx, &tok), out);
    else if (!is_punct(&tok, ')'))
      return expected(lx, "',' or ')' in 'shape'", &tok);
  }
  if (h->ndim == 1 && !trailing_comma)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': shape must be a tuple, found a parenthesised "
                     "integer (a 1-d shape is written '(%lld,)')",
                     lx->name, (long long)h->shape[0]);
  h->have_shape = 1;
out:
  return rc;
}

/* One "key: value" entry; `tok` holds the key. */
static int parse_entry(lexer *lx, npy_header *h, const token *key) {
  token tok;
  char buf[64];
  int rc;
  if (key->kind != TOK_STRING)
    return expected(lx, "a string key or '}'", key);
  if ((rc = next_token(lx, &tok)) != CPK_OK)
    return rc;
  if (!is_punct(&tok, ':'))
    return expected(lx, "':' after a key", &tok);
  if (token_is(key, "descr"))
    return parse_descr(lx, h);
  if (token_is(key, "fortran_order"))
    return parse_fortran(lx, h);
  if (token_is(key, "shape"))
    return parse_shape(lx, h);
  return cpk__fail(CPK_EFORMAT,
                   "'%s': unexpected key %s in the .npy header (expected "
                   "'descr', 'fortran_order' and 'shape')",
                   lx->name, describe(key, buf, sizeof buf));
}

static int check_keys(const lexer *lx, const npy_header *h) {
  const char *missing = !h->have_descr     ? "descr"
                        : !h->have_fortran ? "fortran_order"
                        : !h->have_shape   ? "shape"
                                           : NULL;
  if (missing != NULL)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': the .npy header has no key '%s' (expected "
                     "'descr', 'fortran_order' and 'shape')",
                     lx->name, missing);
  return CPK_OK;
}

/* The whole header: one dict, then nothing but white space. */
static int parse_dict(lexer *lx, npy_header *h) {
  token tok;
  int rc;
  CPK__TRY(rc, next_token(lx, &tok), out);
  if (!is_punct(&tok, '{'))
    return expected(lx, "'{' opening the header dict", &tok);
  CPK__TRY(rc, next_token(lx, &tok), out);
  while (!is_punct(&tok, '}')) {
    CPK__TRY(rc, parse_entry(lx, h, &tok), out);
    CPK__TRY(rc, next_token(lx, &tok), out);
    if (is_punct(&tok, ','))
      CPK__TRY(rc, next_token(lx, &tok), out);
    else if (!is_punct(&tok, '}'))
      return expected(lx, "',' or '}' after a value", &tok);
  }
  CPK__TRY(rc, next_token(lx, &tok), out);
  if (tok.kind != TOK_END)
    return expected(lx, "the end of the header after '}'", &tok);
  rc = check_keys(lx, h);
out:
  return rc;
}

/* ==================================================================== dtype */

/* descr: optional byte order [<>=|], kind f or i, size 4 or 8. */
static int parse_dtype(const char *name, const token *descr, cpk_dtype *dtype,
                       int *big_endian) {
  char buf[64];
  const char *s = descr->text;
  size_t n = descr->len;
  char order = '=';
  if (n > 0 && strchr("<>=|", s[0]) != NULL && s[0] != '\0') {
    order = s[0];
    s++;
    n--;
  }
  if (n >= 1 && s[0] == 'O')
    return cpk__fail(CPK_EFORMAT,
                     "'%s': object arrays (dtype %s) are not supported "
                     "(expected float32, float64, int64 or int32)",
                     name, describe(descr, buf, sizeof buf));
  if (n == 2 && (s[0] == 'f' || s[0] == 'i') && (s[1] == '4' || s[1] == '8')) {
    if (s[0] == 'f')
      *dtype = s[1] == '4' ? CPK_F32 : CPK_F64;
    else
      *dtype = s[1] == '4' ? CPK_I32 : CPK_I64;
    *big_endian = order == '>' || (order != '<' && host_is_big_endian());
    return CPK_OK;
  }
  return cpk__fail(CPK_EFORMAT,
                   "'%s': unsupported dtype '%.*s' (expected float32, "
                   "float64, int64 or int32: '<f4', '<f8', '<i8', '<i4' or "
                   "big-endian '>f4', ...)",
                   name, (int)(descr->len < 32 ? descr->len : 32),
                   descr->text);
}

/* ===================================================================== data */

/* Element count and byte size of the data. Like NumPy, the byte size must
 * fit even when an extent is zero (extents of 0 count as 1 for the check). */
static int data_size(const char *name, const npy_header *h, size_t item,
                     int64_t *numel, size_t *nbytes) {
  char what[512], shp[256];
  int rc;
  cpk_shape_str(shp, sizeof shp, h->ndim, h->shape);
  for (int i = 0; i < h->ndim; i++)
    if (h->shape[i] < 0)
      return cpk__fail(CPK_EFORMAT,
                       "'%s': negative extent %lld in shape %s", name,
                       (long long)h->shape[i], shp);
  snprintf(what, sizeof what, "'%s'", name);
  if ((rc = cpk__shape_numel(h->ndim, h->shape, numel, what)) != CPK_OK)
    return CPK_EFORMAT;
  size_t bound = item;
  for (int i = 0; i < h->ndim; i++) {
    size_t extent = h->shape[i] > 0 ? (size_t)h->shape[i] : 1;
    if (cpk__mul_size(bound, extent, &bound, what) != CPK_OK ||
        bound > (size_t)INT64_MAX)
      return cpk__fail(CPK_EFORMAT,
                       "'%s': the byte size of shape %s overflows", name, shp);
  }
  *nbytes = (size_t)*numel * item;
  return CPK_OK;
}

/* Copy Fortran-order elements at `src` into the C-order tensor `t`: walk the
 * source in order, advancing a multi-index first axis fastest, and keep the
 * destination offset in step through the C strides. */
static void copy_fortran(cpk_tensor *t, const unsigned char *src,
                         int64_t numel, size_t size, int swap) {
  int64_t idx[CPK_MAX_DIMS] = {0};
  int64_t off = 0;
  unsigned char *dst = t->data;
  for (int64_t j = 0; j < numel; j++) {
    copy_elements(dst + (size_t)off * size, src + (size_t)j * size, 1, size,
                  swap);
    for (int k = 0; k < t->ndim; k++) {
      off += t->strides[k];
      if (++idx[k] < t->shape[k])
        break;
      off -= t->shape[k] * t->strides[k];
      idx[k] = 0;
    }
  }
}

static int load_data(const char *name, const npy_header *h,
                     const unsigned char *data, size_t avail,
                     cpk_tensor **out) {
  cpk_dtype dtype = CPK_F32;
  int big = 0, rc;
  int64_t numel = 0;
  size_t nbytes = 0;
  char shp[256];
  if ((rc = parse_dtype(name, &h->descr, &dtype, &big)) != CPK_OK)
    return rc;
  if (h->ndim > CPK_MAX_DIMS)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': shape has %d dimensions (at most %d supported)",
                     name, h->ndim, CPK_MAX_DIMS);
  size_t item = cpk_dtype_size(dtype);
  if ((rc = data_size(name, h, item, &numel, &nbytes)) != CPK_OK)
    return rc;
  cpk_shape_str(shp, sizeof shp, h->ndim, h->shape);
  if (avail < nbytes)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': data truncated: shape %s of %s needs %zu bytes, "
                     "the file has %zu",
                     name, shp, cpk_dtype_name(dtype), nbytes, avail);
  if (avail > nbytes)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': file has %zu bytes after the data (shape %s of "
                     "%s needs %zu bytes)",
                     name, avail - nbytes, shp, cpk_dtype_name(dtype), nbytes);
  if ((rc = cpk_tensor_new(out, dtype, h->ndim, h->shape)) != CPK_OK)
    return cpk__fail_prefix(rc, "'%s'", name);
  int swap = big != host_is_big_endian();
  if (h->fortran_order && h->ndim > 1)
    copy_fortran(*out, data, numel, item, swap);
  else
    copy_elements((*out)->data, data, (size_t)numel, item, swap);
  return CPK_OK;
}

/* =================================================================== reader */

static uint32_t read_le(const unsigned char *p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* Magic, version and header length; sets *header_start and *header_len. */
static int parse_preamble(const unsigned char *b, size_t len, const char *name,
                          int *major, size_t *header_start,
                          size_t *header_len) {
  size_t m = len < NPY_MAGIC_LEN ? len : NPY_MAGIC_LEN;
  if (m > 0 && memcmp(b, NPY_MAGIC, m) != 0)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': not a .npy file (expected the magic string "
                     "\\x93NUMPY at the start)",
                     name);
  if (len < NPY_MAGIC_LEN + 2)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': truncated .npy header: the file has %zu bytes",
                     name, len);
  *major = b[6];
  if ((b[6] != 1 && b[6] != 2 && b[6] != 3) || b[7] != 0)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': unsupported .npy format version %u.%u (expected "
                     "1.0, 2.0 or 3.0)",
                     name, (unsigned)b[6], (unsigned)b[7]);
  int len_bytes = *major == 1 ? 2 : 4;
  *header_start = NPY_MAGIC_LEN + 2 + (size_t)len_bytes;
  if (len < *header_start)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': truncated .npy header: the file has %zu bytes, "
                     "the header length alone needs %zu",
                     name, len, *header_start);
  *header_len = read_le(b + NPY_MAGIC_LEN + 2, len_bytes);
  if (*header_len > len - *header_start)
    return cpk__fail(CPK_EFORMAT,
                     "'%s': the header length %zu points past the end of the "
                     "file (%zu bytes)",
                     name, *header_len, len);
  return CPK_OK;
}

int cpk_npy_parse(const void *bytes, size_t len, const char *name,
                  cpk_tensor **out) {
  const unsigned char *b = bytes;
  size_t start = 0, hlen = 0;
  int major = 0, rc;
  npy_header h;
  if (out == NULL)
    return cpk__fail(CPK_EINVAL, "cpk_npy_parse: no output pointer");
  *out = NULL;
  if (name == NULL)
    name = "<memory>";
  if (bytes == NULL && len != 0)
    return cpk__fail(CPK_EINVAL, "'%s': no data", name);
  if ((rc = parse_preamble(b, len, name, &major, &start, &hlen)) != CPK_OK)
    return rc;
  lexer lx = {(const char *)b + start, (const char *)b + start + hlen, name,
              major < 3};
  memset(&h, 0, sizeof h);
  if ((rc = parse_dict(&lx, &h)) != CPK_OK)
    return rc;
  return load_data(name, &h, b + start + hlen, len - start - hlen, out);
}

/* How many bytes a .npy image whose first `len` bytes are at `b` has in
 * all, as its header says: 1 and *total set; 0 while more bytes are needed
 * to tell; -1 when the bytes read so far are not a valid .npy start (the
 * parse will say why). Nothing is recorded as the last error. */
static int expected_total(const unsigned char *b, size_t len, size_t *total) {
  char saved[1024];
  int major = 0, rc = -1, big;
  size_t start = 0, hlen = 0, nbytes = 0;
  int64_t numel;
  cpk_dtype dtype;
  npy_header h;
  if (len < NPY_MAGIC_LEN + 4)
    return memcmp(b, NPY_MAGIC, len < NPY_MAGIC_LEN ? len : NPY_MAGIC_LEN) ? -1
                                                                           : 0;
  snprintf(saved, sizeof saved, "%s", cpk_last_error());
  if (b[6] == 1 || len >= NPY_MAGIC_LEN + 6) {
    if (parse_preamble(b, len, "", &major, &start, &hlen) != CPK_OK) {
      /* only "the header goes past what was read" means: read on */
      rc = len >= NPY_MAGIC_LEN + 6 && (b[6] == 1 || b[6] == 2 || b[6] == 3) &&
                   b[7] == 0 && memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) == 0
               ? 0
               : -1;
    } else {
      lexer lx = {(const char *)b + start, (const char *)b + start + hlen, "",
                  major < 3};
      memset(&h, 0, sizeof h);
      if (parse_dict(&lx, &h) == CPK_OK && h.ndim <= CPK_MAX_DIMS &&
          parse_dtype("", &h.descr, &dtype, &big) == CPK_OK &&
          data_size("", &h, cpk_dtype_size(dtype), &numel, &nbytes) == CPK_OK &&
          nbytes <= SIZE_MAX - start - hlen) {
        *total = start + hlen + nbytes;
        rc = 1;
      }
    }
  } else {
    rc = 0;
  }
  cpk__fail(CPK_OK, "%s", saved); /* leave the last error as it was */
  return rc;
}

/* Read the whole of an open file into a tracked buffer. Regular files are
 * read in one go; anything else (a pipe) through a growing buffer that
 * stops one byte after the size its .npy header announces, so that a
 * stream which never ends (or is not a .npy file at all) is not read
 * forever. */
static int slurp(FILE *f, const char *path, unsigned char **buf, size_t *len) {
  struct stat st;
  size_t cap = 1 << 16, n = 0, limit = SIZE_MAX;
  int known = 0;
  unsigned char *b = NULL;
  if (fstat(fileno(f), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return cpk__fail(CPK_EIO, "cannot read '%s': %s", path,
                       strerror(EISDIR));
    if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size < SIZE_MAX)
      cap = (size_t)st.st_size + 1;
  }
  for (;;) {
    unsigned char *nb = cpk__malloc(cap);
    if (nb == NULL) {
      cpk__free(b);
      return cpk__fail_prefix(CPK_ENOMEM, "cannot read '%s'", path);
    }
    if (b != NULL)
      memcpy(nb, b, n);
    cpk__free(b);
    b = nb;
    errno = 0;
    n += fread(b + n, 1, cap - n, f);
    if (!known) {
      size_t total;
      const int e = expected_total(b, n, &total);
      if (e != 0) {
        known = 1;
        /* Beyond total + 1 bytes the parse fails anyway ("bytes after
         * the data"); an invalid start fails on what is there. */
        limit = e > 0 && total < SIZE_MAX ? total + 1 : n;
      }
    }
    if (n >= limit)
      break;
    if (n < cap || ferror(f) || cap > SIZE_MAX / 2)
      break;
    cap =
        limit != SIZE_MAX && limit > cap && limit - cap < cap ? limit : 2 * cap;
  }
  if (ferror(f) || (n == cap && n < limit)) {
    int err = n == cap ? EFBIG : errno;
    cpk__free(b);
    return cpk__fail(CPK_EIO, "cannot read '%s': %s", path,
                     err ? strerror(err) : "read error");
  }
  *buf = b;
  *len = n;
  return CPK_OK;
}

int cpk_npy_read(const char *path, cpk_tensor **out) {
  unsigned char *buf = NULL;
  size_t len = 0;
  int rc;
  if (out == NULL || path == NULL)
    return cpk__fail(CPK_EINVAL, "cpk_npy_read: no path or output pointer");
  *out = NULL;
  errno = 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return cpk__fail(CPK_EIO, "cannot open '%s': %s", path, strerror(errno));
  rc = slurp(f, path, &buf, &len);
  fclose(f);
  if (rc == CPK_OK)
    rc = cpk_npy_parse(buf, len, path, out);
  cpk__free(buf);
  return rc;
}

/* =================================================================== writer */

/* Longest header we build: the dict (at most ~60 + 8 * 22 + 21 bytes), the
 * prefix and padding. */
#define NPY_HEADER_MAX 512

/* Build the full header (magic, version, length, dict, padding) as NumPy's
 * _write_array_header does for a C-order array; returns its length. */
static size_t build_header(unsigned char *out, const cpk_tensor *t) {
  static const char *const descr[] = {"<f4", "<f8", "<i8", "<i4"};
  char dict[NPY_HEADER_MAX], shp[256];
  int n = snprintf(dict, sizeof dict,
                   "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                   descr[t->dtype],
                   cpk_shape_str(shp, sizeof shp, t->ndim, t->shape));
  if (t->ndim > 0) {
    int digits = snprintf(NULL, 0, "%lld", (long long)t->shape[0]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%*s",
                  NPY_GROWTH_DIGITS - digits, "");
  }
  size_t hlen = (size_t)n + 1; /* with the final '\n' */
  int len_bytes = 2, major = 1;
  size_t pad = NPY_ALIGN - (NPY_MAGIC_LEN + 2 + 2 + hlen) % NPY_ALIGN;
  if (hlen + pad > 65535) { /* cannot happen with CPK_MAX_DIMS, as in NumPy */
    len_bytes = 4, major = 2;
    pad = NPY_ALIGN - (NPY_MAGIC_LEN + 2 + 4 + hlen) % NPY_ALIGN;
  }
  size_t total_hlen = hlen + pad, pos = 0;
  memcpy(out, NPY_MAGIC, NPY_MAGIC_LEN);
  pos += NPY_MAGIC_LEN;
  out[pos++] = (unsigned char)major;
  out[pos++] = 0;
  for (int i = 0; i < len_bytes; i++)
    out[pos++] = (unsigned char)(total_hlen >> (8 * i));
  memcpy(out + pos, dict, (size_t)n);
  pos += (size_t)n;
  memset(out + pos, ' ', pad);
  pos += pad;
  out[pos++] = '\n';
  return pos;
}

/* Whether `t` is laid out in C order (extents of 1 may have any stride). */
static int is_c_contiguous(const cpk_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->strides[i] != s)
      return 0;
    s *= t->shape[i];
  }
  return 1;
}

/* Write the elements in C order, little-endian: straight from memory when
 * that is their layout, else gathered through its strides into a buffer. */
static int write_data(FILE *f, const cpk_tensor *t, int64_t numel) {
  size_t size = cpk_dtype_size(t->dtype);
  int swap = host_is_big_endian();
  if (is_c_contiguous(t) && !swap)
    return fwrite(t->data, size, (size_t)numel, f) == (size_t)numel ? 0 : -1;
  unsigned char buf[8192];
  const unsigned char *src = t->data;
  int64_t idx[CPK_MAX_DIMS] = {0}, off = 0;
  size_t used = 0;
  for (int64_t j = 0; j < numel; j++) {
    copy_elements(buf + used, src + off * (int64_t)size, 1, size, swap);
    used += size;
    if (used == sizeof buf || j == numel - 1) {
      if (fwrite(buf, 1, used, f) != used)
        return -1;
      used = 0;
    }
    for (int k = t->ndim - 1; k >= 0; k--) {
      off += t->strides[k];
      if (++idx[k] < t->shape[k])
        break;
      off -= t->shape[k] * t->strides[k];
      idx[k] = 0;
    }
  }
  return 0;
}

static int check_writable(const cpk_tensor *t, const char *path,
                          int64_t *numel) {
  char what[512];
  if (t->ndim < 0 || t->ndim > CPK_MAX_DIMS)
    return cpk__fail(CPK_EINVAL,
                     "cannot write '%s': tensor of %d dimensions (at most %d)",
                     path, t->ndim, CPK_MAX_DIMS);
  if (cpk_dtype_size(t->dtype) == 0)
    return cpk__fail(CPK_EINVAL, "cannot write '%s': unknown dtype %d", path,
                     (int)t->dtype);
  snprintf(what, sizeof what, "cannot write '%s'", path);
  int rc = cpk__shape_numel(t->ndim, t->shape, numel, what);
  if (rc == CPK_OK && *numel > 0 && t->data == NULL)
    rc = cpk__fail(CPK_EINVAL, "cannot write '%s': tensor has no data", path);
  return rc;
}

/* Header and data into an open file, flushed; returns errno or -1. */
static int write_file(FILE *f, const cpk_tensor *t, int64_t numel) {
  unsigned char head[NPY_HEADER_MAX + NPY_ALIGN + 16];
  size_t n = build_header(head, t);
  errno = 0;
  if (fwrite(head, 1, n, f) != n || write_data(f, t, numel) != 0 ||
      fflush(f) != 0)
    return errno ? errno : -1;
  return 0;
}

int cpk_npy_write(const char *path, const cpk_tensor *t) {
  int64_t numel;
  int rc, err;
  if (path == NULL || t == NULL)
    return cpk__fail(CPK_EINVAL, "cpk_npy_write: no path or tensor");
  if ((rc = cpk__require_host(t, path)) != CPK_OK ||
      (rc = check_writable(t, path, &numel)) != CPK_OK)
    return rc;
  size_t tmp_cap = strlen(path) + 32;
  char *tmp = cpk__malloc(tmp_cap);
  if (tmp == NULL)
    return cpk__fail_prefix(CPK_ENOMEM, "cannot write '%s'", path);
  snprintf(tmp, tmp_cap, "%s.tmp.%ld", path, (long)getpid());
  errno = 0;
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    err = errno ? errno : -1;
  } else {
    err = write_file(f, t, numel);
    errno = 0;
    if (fclose(f) != 0 && err == 0)
      err = errno ? errno : -1;
    if (err == 0 && rename(tmp, path) != 0)
      err = errno ? errno : -1;
    if (err != 0)
      remove(tmp);
  }
  cpk__free(tmp);
  if (err != 0)
    return cpk__fail(CPK_EIO, "cannot write '%s': %s", path,
                     err > 0 ? strerror(err) : "write failed");
  return CPK_OK;
}
