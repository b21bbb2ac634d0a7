/*
 * idx.c: IDX files (the MNIST format), gzip-compressed or plain.
 *
 * Layout (big-endian): two zero bytes, the element type (0x08 = unsigned
 * byte), the number of dimensions D, then D uint32 extents, then the
 * elements in C order. zlib's gzread reads compressed and plain files alike.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"

/* Bytes read and converted per gzread call. */
#define IDX_CHUNK ((size_t)1 << 20)

/* Read exactly `len` bytes; *got says how many arrived. Returns CPK_OK, or
 * CPK_EIO/CPK_EFORMAT with a message naming the file when zlib fails. */
static int read_bytes(gzFile f, const char *path, void *buf, size_t len,
                      size_t *got) {
  *got = 0;
  while (*got < len) {
    size_t want = len - *got > IDX_CHUNK ? IDX_CHUNK : len - *got;
    int n = gzread(f, (unsigned char *)buf + *got, (unsigned)want);
    if (n < 0) {
      int zerr;
      const char *msg = gzerror(f, &zerr);
      return cpk__fail(zerr == Z_ERRNO ? CPK_EIO : CPK_EFORMAT, "%s: %s", path,
                       zerr == Z_ERRNO ? strerror(errno) : msg);
    }
    if (n == 0)
      break;
    *got += (size_t)n;
  }
  return CPK_OK;
}

static const char *type_name(int code) {
  switch (code) {
  case 0x09:
    return "signed byte";
  case 0x0B:
    return "int16";
  case 0x0C:
    return "int32";
  case 0x0D:
    return "float32";
  case 0x0E:
    return "float64";
  default:
    return NULL;
  }
}

/* Header: magic, then the extents. Fills ndim and shape. */
static int read_header(gzFile f, const char *path, int *ndim, int64_t *shape) {
  unsigned char magic[4], dims[4 * 255];
  size_t got;
  int rc = read_bytes(f, path, magic, 4, &got);
  if (rc != CPK_OK)
    return rc;
  if (got < 4)
    return cpk__fail(CPK_EFORMAT,
                     "%s: truncated IDX header (%zu of 4 magic bytes)", path,
                     got);
  if (magic[0] != 0 || magic[1] != 0)
    return cpk__fail(CPK_EFORMAT,
                     "%s: not an IDX file (magic 0x%02x%02x%02x%02x, expected "
                     "0x000008DD)",
                     path, magic[0], magic[1], magic[2], magic[3]);
  if (magic[2] != 0x08) {
    const char *name = type_name(magic[2]);
    if (name != NULL)
      return cpk__fail(CPK_ENOTSUP,
                       "%s: IDX element type 0x%02x (%s) is not supported, "
                       "expected 0x08 (unsigned byte)",
                       path, magic[2], name);
    return cpk__fail(CPK_EFORMAT,
                     "%s: unknown IDX element type 0x%02x, expected 0x08 "
                     "(unsigned byte)",
                     path, magic[2]);
  }
  *ndim = magic[3];
  if (*ndim < 1 || *ndim > CPK_MAX_DIMS - 1)
    return cpk__fail(CPK_EFORMAT,
                     "%s: IDX file with %d dimensions, expected 1 to %d", path,
                     *ndim, CPK_MAX_DIMS - 1);
  if ((rc = read_bytes(f, path, dims, (size_t)4 * *ndim, &got)) != CPK_OK)
    return rc;
  if (got < (size_t)4 * *ndim)
    return cpk__fail(CPK_EFORMAT,
                     "%s: truncated IDX header (%zu of %d bytes of extents)",
                     path, got, 4 * *ndim);
  for (int d = 0; d < *ndim; d++) {
    const unsigned char *b = dims + 4 * d;
    shape[d] = (int64_t)b[0] << 24 | (int64_t)b[1] << 16 | (int64_t)b[2] << 8 |
               (int64_t)b[3];
    if (shape[d] == 0)
      return cpk__fail(CPK_EFORMAT, "%s: IDX dimension %d has extent 0", path,
                       d);
  }
  return CPK_OK;
}

/* out[i] := scale * bytes[i] (floats) or bytes[i] (integers). */
static void convert(cpk_tensor *t, int64_t at, const unsigned char *bytes,
                    size_t n, double scale) {
  switch (t->dtype) {
  case CPK_F32: {
    float *o = (float *)t->data + at;
    for (size_t i = 0; i < n; i++)
      o[i] = (float)(scale * bytes[i]);
    break;
  }
  case CPK_F64: {
    double *o = (double *)t->data + at;
    for (size_t i = 0; i < n; i++)
      o[i] = scale * bytes[i];
    break;
  }
  case CPK_I64: {
    int64_t *o = (int64_t *)t->data + at;
    for (size_t i = 0; i < n; i++)
      o[i] = bytes[i];
    break;
  }
  case CPK_I32: {
    int32_t *o = (int32_t *)t->data + at;
    for (size_t i = 0; i < n; i++)
      o[i] = bytes[i];
    break;
  }
  }
}

/* The `count` bytes after the header into a tracked buffer, then (when the
 * whole file was asked for) nothing more. The buffer grows with what
 * arrives, so a header that announces more than the file holds fails as
 * truncated after reading the file, without first taking the memory it
 * announced. */
static int read_data(gzFile f, const char *path, int64_t count, int whole,
                     unsigned char **out) {
  size_t cap = (size_t)count < IDX_CHUNK ? (size_t)count : IDX_CHUNK;
  unsigned char *buf = cpk__malloc(cap);
  int rc = buf ? CPK_OK : CPK_ENOMEM;
  size_t done = 0;
  while (rc == CPK_OK && done < (size_t)count) {
    if (done == cap) {
      size_t grown = cap > (size_t)count / 2 ? (size_t)count : 2 * cap;
      unsigned char *nb = cpk__malloc(grown);
      if (nb == NULL) {
        rc = CPK_ENOMEM;
        break;
      }
      memcpy(nb, buf, done);
      cpk__free(buf);
      buf = nb;
      cap = grown;
    }
    size_t want = cap - done, got;
    if ((rc = read_bytes(f, path, buf + done, want, &got)) != CPK_OK)
      break;
    done += got;
    if (got < want)
      rc = cpk__fail(CPK_EFORMAT,
                     "%s: truncated IDX data: the header announces %lld "
                     "bytes, the file holds %zu",
                     path, (long long)count, done);
  }
  if (rc == CPK_OK && whole) {
    unsigned char extra_byte;
    size_t extra;
    if ((rc = read_bytes(f, path, &extra_byte, 1, &extra)) == CPK_OK &&
        extra != 0)
      rc = cpk__fail(CPK_EFORMAT,
                     "%s: data continues after the %lld bytes the IDX "
                     "header announces",
                     path, (long long)count);
  }
  if (rc != CPK_OK) {
    cpk__free(buf);
    return rc == CPK_ENOMEM ? cpk__fail_prefix(rc, "%s", path) : rc;
  }
  *out = buf;
  return CPK_OK;
}

int cpk_idx_read(const char *path, cpk_dtype dtype, double scale,
                 int64_t max_items, cpk_tensor **out) {
  int ndim, rc;
  int64_t shape[CPK_MAX_DIMS], total;
  unsigned char *bytes = NULL;
  *out = NULL;
  if (max_items < 0)
    return cpk__fail(CPK_EINVAL, "%s: max_items must be >= 0, got %lld", path,
                     (long long)max_items);
  if (!cpk__is_float(dtype) && scale != 1.0)
    return cpk__fail(CPK_EINVAL, "%s: integer results take scale 1, got %g",
                     path, scale);
  gzFile f = gzopen(path, "rb");
  if (f == NULL)
    return cpk__fail(CPK_EIO, "%s: cannot open: %s", path,
                     errno ? strerror(errno) : "out of memory");
  CPK__TRY(rc, read_header(f, path, &ndim, shape), done);
  /* Every extent must multiply without overflow, the subset's or not. */
  CPK__TRY(rc, cpk__shape_numel(ndim, shape, &total, path), done);
  const int whole = max_items == 0 || max_items >= shape[0];
  if (!whole)
    shape[0] = max_items;
  CPK__TRY(rc, cpk__shape_numel(ndim, shape, &total, path), done);
  CPK__TRY(rc, read_data(f, path, total, whole, &bytes), done);
  if ((rc = cpk_tensor_new(out, dtype, ndim, shape)) != CPK_OK) {
    rc = cpk__fail_prefix(rc, "%s", path);
    goto done;
  }
  convert(*out, 0, bytes, (size_t)total, scale);
done:
  cpk__free(bytes);
  gzclose(f);
  if (rc != CPK_OK) {
    cpk_tensor_free(*out);
    *out = NULL;
  }
  return rc;
}
