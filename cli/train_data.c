/* train_data.c: the (Fashion-)MNIST IDX files of a training run. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "train.h"

void train_data_free(train_data *d) {
  cpk_tensor_free(d->train_x);
  cpk_tensor_free(d->train_y);
  cpk_tensor_free(d->test_x);
  cpk_tensor_free(d->test_y);
  memset(d, 0, sizeof *d);
}

/* DIR/STEM.gz, else DIR/STEM; returns an exit status when neither is
 * there. */
static int locate(const char *dir, const char *stem, char *path, size_t len) {
  struct stat st;
  snprintf(path, len, "%s/%s.gz", dir, stem);
  if (stat(path, &st) == 0)
    return 0;
  snprintf(path, len, "%s/%s", dir, stem);
  if (stat(path, &st) == 0)
    return 0;
  if (strcmp(dir, TRAIN_DEFAULT_DATA) == 0)
    return cli_error(CPK_EIO,
                     "Fashion-MNIST not found: %s/%s.gz is missing; install "
                     "the Debian package dataset-fashion-mnist (apt-get "
                     "install dataset-fashion-mnist) or pass --data DIR",
                     dir, stem);
  return cli_error(CPK_EIO,
                   "--data %s: neither %s.gz nor %s is there (expected the "
                   "IDX files of MNIST or Fashion-MNIST)",
                   dir, stem, stem);
}

/* Images [N, R, C] as [N, 1, R, C] in [0, 1], and their labels. */
static int load_split(const char *dir, const char *prefix, cpk_dtype dtype,
                      int64_t limit, cpk_tensor **x, cpk_tensor **y) {
  char ipath[PATH_MAX], lpath[PATH_MAX], stem[64];
  int rc, st;
  snprintf(stem, sizeof stem, "%s-images-idx3-ubyte", prefix);
  if ((rc = locate(dir, stem, ipath, sizeof ipath)) != 0)
    return rc;
  snprintf(stem, sizeof stem, "%s-labels-idx1-ubyte", prefix);
  if ((rc = locate(dir, stem, lpath, sizeof lpath)) != 0)
    return rc;
  if ((st = cpk_idx_read(ipath, dtype, 1.0 / 255.0, limit, x)) != CPK_OK ||
      (st = cpk_idx_read(lpath, CPK_I64, 1.0, limit, y)) != CPK_OK)
    return cli_lib_error(st);
  if ((*x)->ndim != 3)
    return cli_error(CPK_EFORMAT,
                     "%s: expected images (N, rows, columns), "
                     "found %d axes",
                     ipath, (*x)->ndim);
  if ((*y)->ndim != 1 || (*y)->shape[0] != (*x)->shape[0])
    return cli_error(CPK_EFORMAT,
                     "%s: expected %lld labels (one per image of %s), found "
                     "shape with %lld entries",
                     lpath, (long long)(*x)->shape[0], ipath,
                     (long long)(*y)->shape[0]);
  /* [N, R, C] -> [N, 1, R, C], the same bytes. */
  (*x)->ndim = 4;
  (*x)->shape[3] = (*x)->shape[2];
  (*x)->shape[2] = (*x)->shape[1];
  (*x)->shape[1] = 1;
  (*x)->strides[3] = 1;
  (*x)->strides[2] = (*x)->shape[3];
  (*x)->strides[1] = (*x)->shape[2] * (*x)->shape[3];
  (*x)->strides[0] = (*x)->strides[1];
  return 0;
}

int train_data_load(const char *dir, cpk_dtype dtype, int64_t subset,
                    int64_t test_subset, train_data *d) {
  memset(d, 0, sizeof *d);
  int rc = load_split(dir, "train", dtype, subset, &d->train_x, &d->train_y);
  if (rc == 0)
    rc = load_split(dir, "t10k", dtype, test_subset, &d->test_x, &d->test_y);
  if (rc != 0)
    train_data_free(d);
  return rc;
}
