/* output.c: writing a command's outputs all or nothing. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

int cli_make_dir(const char *path) {
  char buf[PATH_MAX];
  if (path[0] == '\0')
    return cli_error(CPK_EUSAGE, "the output directory name is empty");
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return cli_error(CPK_EINVAL, "output directory name is too long: '%s'",
                     path);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
      return cli_error(CPK_EIO, "cannot create output directory '%s': %s",
                       buf, strerror(errno));
    *p = saved;
    if (saved == '\0')
      break;
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return cli_error(CPK_EIO, "output path '%s' is not a directory", path);
  if (access(path, W_OK) != 0)
    return cli_error(CPK_EIO, "output directory '%s' is not writable: %s",
                     path, strerror(errno));
  return 0;
}

/* OUT/.NAME.partial-PID: where an output waits until every one is written. */
static void temp_name(char *buf, size_t len, const char *out, const char *name) {
  snprintf(buf, len, "%s/.%s.partial-%ld", out, name, (long)getpid());
}

int cli_write_results(const char *out, const cpk_results *r) {
  char tmp[PATH_MAX], dst[PATH_MAX], file[128];
  int n = cpk_results_count(r), written = 0, rc = 0;
  if (cli_rank() != 0) /* under MPI rank 0 writes */
    return 0;
  if ((rc = cli_make_dir(out)) != 0)
    return rc;
  for (; written < n; written++) {
    snprintf(file, sizeof file, "%s.npy", cpk_results_name(r, written));
    temp_name(tmp, sizeof tmp, out, file);
    int st = cpk_npy_write(tmp, cpk_results_tensor(r, written));
    if (st != CPK_OK) {
      /* Name the output, not its temporary: "cannot write 'OUT/x.npy':
       * No space left on device". */
      const char *msg = cpk_last_error(), *at = strstr(msg, tmp);
      snprintf(dst, sizeof dst, "%s/%s", out, file);
      if (at != NULL)
        rc = cli_error(st, "%.*s%s%s", (int)(at - msg), msg, dst,
                       at + strlen(tmp));
      else
        rc = cli_lib_error(st);
      break;
    }
  }
  for (int i = 0; rc == 0 && i < n; i++) {
    snprintf(file, sizeof file, "%s.npy", cpk_results_name(r, i));
    temp_name(tmp, sizeof tmp, out, file);
    snprintf(dst, sizeof dst, "%s/%s", out, file);
    if (rename(tmp, dst) != 0)
      rc = cli_error(CPK_EIO, "cannot rename '%s' to '%s': %s", tmp, dst,
                     strerror(errno));
  }
  if (rc != 0)
    for (int i = 0; i < written; i++) {
      snprintf(file, sizeof file, "%s.npy", cpk_results_name(r, i));
      temp_name(tmp, sizeof tmp, out, file);
      unlink(tmp);
    }
  return rc;
}

int cli_write_text(const char *out, const char *name, const char *text) {
  char tmp[PATH_MAX], dst[PATH_MAX];
  if (cli_rank() != 0) /* under MPI rank 0 writes */
    return 0;
  temp_name(tmp, sizeof tmp, out, name);
  snprintf(dst, sizeof dst, "%s/%s", out, name);
  FILE *f = fopen(tmp, "w");
  if (f == NULL)
    return cli_error(CPK_EIO, "cannot write '%s': %s", dst, strerror(errno));
  int ok = fputs(text, f) >= 0;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, dst) != 0) {
    int err = errno;
    unlink(tmp);
    return cli_error(CPK_EIO, "cannot write '%s': %s", dst, strerror(err));
  }
  return 0;
}
