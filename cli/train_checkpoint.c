/* train_checkpoint.c: RUN/checkpoint, replaced atomically (train.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train.h"

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

int train_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0)
    return 0;
  if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return cli_error(CPK_EIO, "cannot remove '%s': %s", path, strerror(errno));
  return 0;
}

int train_path(char *buf, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= len)
    return cli_error(CPK_EINVAL, "path too long: %.80s...", buf);
  return 0;
}

void train_state_config(train_state *st, const char *name, const char *fmt,
                        ...) {
  va_list ap;
  if (st->nconfig == TRAIN_CONFIG_MAX)
    return;
  snprintf(st->config[st->nconfig][0], sizeof st->config[0][0], "%s", name);
  va_start(ap, fmt);
  vsnprintf(st->config[st->nconfig][1], sizeof st->config[0][1], fmt, ap);
  va_end(ap);
  st->nconfig++;
}

static int write_state(const char *path, const cpk_trainer *tr,
                       const train_state *st) {
  FILE *f = fopen(path, "w");
  if (f == NULL)
    return cli_error(CPK_EIO, "cannot write %s: %s", path, strerror(errno));
  fprintf(f, "step %lld\nepoch %lld\nbatch %lld\nelapsed %.6f\n",
          (long long)cpk_trainer_step(tr), (long long)cpk_trainer_epoch(tr),
          (long long)cpk_trainer_batch(tr), st->elapsed);
  fprintf(f,
          "size.metrics.jsonl %ld\nsize.metrics.csv %ld\n"
          "size.eval.jsonl %ld\nsize.eval.csv %ld\n",
          st->sizes[0], st->sizes[1], st->sizes[2], st->sizes[3]);
  for (int i = 0; i < st->nconfig; i++)
    fprintf(f, "config.%s %s\n", st->config[i][0], st->config[i][1]);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad)
    return cli_error(CPK_EIO, "cannot write %s: %s", path, strerror(errno));
  return 0;
}

int train_checkpoint_save(const char *run, const cpk_trainer *tr,
                          const train_state *st) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  char tmp[PATH_MAX], dst[PATH_MAX], old[PATH_MAX], state[PATH_MAX];
  int rc;
  if ((rc = train_path(tmp, sizeof tmp, "%s/.checkpoint.tmp", run)) ||
      (rc = train_path(dst, sizeof dst, "%s/checkpoint", run)) ||
      (rc = train_path(old, sizeof old, "%s/checkpoint.old", run)) ||
      (rc = train_path(state, sizeof state, "%s/run.txt", tmp)) ||
      (rc = train_remove_tree(tmp)) != 0)
    return rc;
  if (mkdir(tmp, 0777) != 0)
    return cli_error(CPK_EIO, "cannot create %s: %s", tmp, strerror(errno));
  /* A checkpoint that cannot be written whole (a full disk) leaves the
   * last good one and no partial copy. */
  int s = cpk_trainer_save(tr, tmp);
  if (s != CPK_OK) {
    rc = cli_lib_error(s);
    train_remove_tree(tmp);
    return rc;
  }
  if ((rc = write_state(state, tr, st)) != 0) {
    train_remove_tree(tmp);
    return rc;
  }
  struct stat sb;
  if ((rc = train_remove_tree(old)) != 0)
    return rc;
  if (stat(dst, &sb) == 0 && rename(dst, old) != 0)
    return cli_error(CPK_EIO, "cannot move %s aside: %s", dst, strerror(errno));
  if (rename(tmp, dst) != 0)
    return cli_error(CPK_EIO, "cannot rename %s to %s: %s", tmp, dst,
                     strerror(errno));
  return train_remove_tree(old);
}

int train_checkpoint_find(const char *run, char *dir, size_t len,
                          train_state *st) {
  char path[PATH_MAX], key[300], value[300];
  struct stat sb;
  memset(st, 0, sizeof *st);
  snprintf(dir, len, "%s/checkpoint", run);
  if (stat(dir, &sb) != 0) {
    snprintf(dir, len, "%s/checkpoint.old", run);
    if (stat(dir, &sb) != 0)
      return cli_error(CPK_EIO,
                       "--resume: %s/checkpoint not found (nothing to "
                       "resume; start the run without --resume)",
                       run);
  }
  if (train_path(path, sizeof path, "%s/run.txt", dir) != 0)
    return CLI_EXIT_FAILURE;
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return cli_error(CPK_EIO, "--resume: cannot read %s: %s", path,
                     strerror(errno));
  int seen = 0;
  while (fscanf(f, "%299s %299[^\n]", key, value) == 2) {
    if (strcmp(key, "elapsed") == 0)
      st->elapsed = strtod(value, NULL), seen |= 1;
    for (int i = 0; i < 4; i++) {
      static const char *const names[4] = {"size.metrics.jsonl",
                                           "size.metrics.csv",
                                           "size.eval.jsonl", "size.eval.csv"};
      if (strcmp(key, names[i]) == 0)
        st->sizes[i] = strtol(value, NULL, 10), seen |= 2 << i;
    }
    if (strncmp(key, "config.", 7) == 0)
      train_state_config(st, key + 7, "%s", value);
  }
  fclose(f);
  if (seen != 31)
    return cli_error(CPK_EFORMAT, "--resume: %s is incomplete", path);
  return 0;
}

int train_state_check(const train_state *saved, const train_state *now) {
  for (int i = 0; i < now->nconfig; i++) {
    const char *was = "(absent)";
    for (int j = 0; j < saved->nconfig; j++)
      if (strcmp(saved->config[j][0], now->config[i][0]) == 0)
        was = saved->config[j][1];
    if (strcmp(was, now->config[i][1]) != 0)
      return cli_error(CPK_EUSAGE,
                       "--resume: the run was trained with %s = %s, this "
                       "command says %s (resume with the run's options)",
                       now->config[i][0], was, now->config[i][1]);
  }
  return 0;
}
