/*
 * cmd_plot.c: `curvpack plot RUN`, Cockpit-like panels of a run's
 * diagnostics over the steps, rendered by gnuplot (Debian package
 * gnuplot-nox, pngcairo terminal) from RUN/metrics.csv and RUN/eval.csv
 * into RUN/dashboard.png (written to a temporary name, checked to be a PNG,
 * then renamed).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include "train.h"

extern char **environ;

#define MAX_COLS 256

/* The columns of a CSV file and, per column, whether it has a value, and
 * whether every value is > 0 (then a panel may use a log scale). */
typedef struct csv_info {
  int ncols;
  char name[MAX_COLS][96];
  int any[MAX_COLS], positive[MAX_COLS];
} csv_info;

static int read_csv(const char *path, csv_info *c) {
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  char *line = NULL;
  size_t cap = 0;
  for (int row = 0; getline(&line, &cap, f) > 0; row++) {
    line[strcspn(line, "\r\n")] = '\0';
    int col = 0;
    for (char *p = line;; col++) {
      size_t len = strcspn(p, ",");
      if (col < MAX_COLS) {
        if (row == 0) {
          snprintf(c->name[col], sizeof c->name[0], "%.*s", (int)len, p);
          c->ncols = col + 1;
          c->positive[col] = 1;
        } else if (len > 0) {
          double v = strtod(p, NULL);
          c->any[col] = 1;
          c->positive[col] &= v > 0.0;
        }
      }
      if (p[len] == '\0')
        break;
      p += len + 1;
    }
  }
  free(line);
  fclose(f);
  return c->ncols > 0;
}

static int column(const csv_info *c, const char *name) {
  for (int i = 0; i < c->ncols; i++)
    if (strcmp(c->name[i], name) == 0)
      return c->any[i] ? i : -1;
  return -1;
}

/* A gnuplot single-quoted string ('' stands for a quote). */
static void quoted(FILE *f, const char *s) {
  fputc('\'', f);
  for (; *s; s++) {
    if (*s == '\'')
      fputc('\'', f);
    fputc(*s, f);
  }
  fputc('\'', f);
}

/* The panels: a title and up to three series (metrics columns; an "eval:"
 * prefix reads eval.csv). */
static const struct panel {
  const char *title;
  const char *series[3];
} panels[] = {
    {"loss", {"loss", "eval:test_loss"}},
    {"accuracy", {"accuracy", "eval:test_accuracy"}},
    {"gradient norm", {"grad_norm", "sample_grad_norm_mean"}},
    {"mean GSNR", {"gsnr_mean"}},
    {"norm / inner-product / orthogonality tests",
     {"norm_test", "inner_test", "ortho_test"}},
    {"alpha (normalised step length)", {"alpha"}},
    {"Hessian trace", {"hess_trace"}},
    {"top Hessian eigenvalue", {"hess_max_ev"}},
    {"TIC (diagonal)", {"tic"}},
    {"distance from initialisation", {"distance"}},
    {"update size", {"update_size"}},
    {"gradient variance (sum)", {"variance"}},
};
#define NPANELS (sizeof panels / sizeof panels[0])

/* Which series of panel p have data; returns their count. */
static int present(const struct panel *p, const csv_info *m, const csv_info *e,
                   int *cols, int *in_eval) {
  int n = 0;
  for (int s = 0; s < 3 && p->series[s]; s++) {
    const int ev = strncmp(p->series[s], "eval:", 5) == 0;
    const char *name = ev ? p->series[s] + 5 : p->series[s];
    const int c = column(ev ? e : m, name);
    cols[s] = c;
    in_eval[s] = ev;
    n += c >= 0;
  }
  return n;
}

static int write_script(FILE *f, const char *run, const char *png,
                        const csv_info *m, const csv_info *e) {
  char mpath[PATH_MAX], epath[PATH_MAX];
  int cols[3], ev[3], count = 0;
  snprintf(mpath, sizeof mpath, "%s/metrics.csv", run);
  snprintf(epath, sizeof epath, "%s/eval.csv", run);
  for (size_t i = 0; i < NPANELS; i++)
    count += present(&panels[i], m, e, cols, ev) > 0;
  if (count == 0)
    return cli_error(CPK_EINVAL,
                     "%s: nothing to plot (no tracked quantity in "
                     "metrics.csv, no evaluation in eval.csv)",
                     run);
  const int across = count < 3 ? count : 3, down = (count + 2) / 3;
  fprintf(f, "set terminal pngcairo size %d,%d noenhanced font ',9'\n",
          520 * across, 360 * down);
  fputs("set output ", f);
  quoted(f, png);
  fputs("\nset datafile separator ','\nset grid\nset xlabel 'step'\n", f);
  fprintf(f, "set multiplot layout %d,%d title ", down, across);
  quoted(f, run);
  fputc('\n', f);
  for (size_t i = 0; i < NPANELS; i++) {
    const struct panel *p = &panels[i];
    if (present(p, m, e, cols, ev) == 0)
      continue;
    int log = 1;
    for (int s = 0; s < 3 && p->series[s]; s++)
      if (cols[s] >= 0)
        log &= (ev[s] ? e : m)->positive[cols[s]];
    /* Losses and accuracies read best on a linear scale. */
    log &= i >= 2;
    fprintf(f, "set title '%s'\n%s\nset key %s\nplot ", p->title,
            log ? "set logscale y" : "unset logscale y",
            strcmp(p->title, "accuracy") == 0 ? "bottom right" : "top right");
    int first = 1;
    for (int s = 0; s < 3 && p->series[s]; s++) {
      if (cols[s] < 0)
        continue;
      const char *name = ev[s] ? p->series[s] + 5 : p->series[s];
      fputs(first ? "" : ", ", f);
      quoted(f, ev[s] ? epath : mpath);
      fprintf(f, " using 'step':'%s' with %s title '%s%s'", name,
              ev[s] ? "linespoints pt 7" : "lines", name,
              ev[s] ? " (after each epoch)" : "");
      first = 0;
    }
    fputc('\n', f);
  }
  fputs("unset multiplot\n", f);
  return 0;
}

/* Run gnuplot on the script, its stderr into `log`. */
static int run_gnuplot(const char *script, const char *log) {
  posix_spawn_file_actions_t fa;
  pid_t pid;
  int status;
  char *argv[] = {"gnuplot", (char *)script, NULL};
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, log,
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY,
                                   0);
  int err = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (err == ENOENT)
    return cli_error(CPK_EIO, "gnuplot not found: `curvpack plot` needs the "
                              "Debian package gnuplot-nox (apt-get install "
                              "gnuplot-nox)");
  if (err != 0)
    return cli_error(CPK_EIO, "cannot run gnuplot: %s", strerror(err));
  if (waitpid(pid, &status, 0) < 0)
    return cli_error(CPK_EIO, "waiting for gnuplot: %s", strerror(errno));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  /* The first error line gnuplot wrote. */
  char line[512] = "", why[512] = "";
  FILE *f = fopen(log, "r");
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (why[0] == '\0' && strstr(line, "line ") != NULL &&
        strstr(line, "warning") == NULL)
      snprintf(why, sizeof why, "%s", line);
  if (f != NULL)
    fclose(f);
  why[strcspn(why, "\n")] = '\0';
  if (strstr(why, "terminal") != NULL)
    return cli_error(CPK_EIO,
                     "this gnuplot has no pngcairo terminal (%s): "
                     "install the Debian package gnuplot-nox",
                     why);
  return cli_error(CPK_EIO, "gnuplot failed (exit %d): %s",
                   WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                   why[0] ? why : "no message");
}

/* Whether `path` starts with the 8-byte PNG signature. */
static int is_png(const char *path) {
  static const unsigned char sig[8] = {0x89, 'P',  'N',  'G',
                                       '\r', '\n', 0x1a, '\n'};
  unsigned char head[8];
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(head, 1, 8, f) : 0;
  if (f)
    fclose(f);
  return n == 8 && memcmp(head, sig, 8) == 0;
}

int cmd_plot(int argc, char **argv) {
  const char *run = NULL, *out = NULL;
  const cli_opt opts[] = {
      {"run", "DIR", "the run (or give it as the first argument)", &run, NULL},
      {"out", "FILE", "the image (default RUN/dashboard.png)", &out, NULL},
  };
  if (argc > 0 && strncmp(argv[0], "--", 2) != 0 &&
      strcmp(argv[0], "-h") != 0) {
    run = argv[0];
    argc--;
    argv++;
  }
  int rc = cli_parse("plot",
                     "curvpack plot RUN: render the diagnostics of a "
                     "training run (curvpack "
                     "train --run RUN) as a dashboard of panels over the "
                     "steps: loss and accuracy (batch and test), gradient "
                     "norm, GSNR, the norm, inner-product and orthogonality "
                     "tests, alpha, Hessian trace and top eigenvalue, TIC, "
                     "distance, update size. Needs gnuplot (Debian package "
                     "gnuplot-nox).",
                     argc, argv, opts, 2);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if ((rc = cli_require("plot", "run", run)) != 0)
    return rc;
  char mpath[PATH_MAX], epath[PATH_MAX], png[PATH_MAX], tmp[PATH_MAX],
      script[PATH_MAX], log[PATH_MAX];
  csv_info *m = malloc(sizeof *m), *e = malloc(sizeof *e);
  if (m == NULL || e == NULL) {
    free(m);
    free(e);
    return cli_error(CPK_ENOMEM, "out of memory");
  }
  const long pid = (long)getpid();
  if ((rc = train_path(mpath, sizeof mpath, "%s/metrics.csv", run)) ||
      (rc = train_path(epath, sizeof epath, "%s/eval.csv", run)) ||
      (rc = out ? train_path(png, sizeof png, "%s", out)
                : train_path(png, sizeof png, "%s/dashboard.png", run)) ||
      (rc = train_path(tmp, sizeof tmp, "%s.partial-%ld", png, pid)) ||
      (rc = train_path(script, sizeof script, "%s/.dashboard-%ld.gp", run,
                       pid)) ||
      (rc = train_path(log, sizeof log, "%s/.dashboard-%ld.log", run, pid)))
    goto cleanup;
  if (!read_csv(mpath, m) && !read_csv(epath, e)) {
    rc = cli_error(CPK_EIO,
                   "%s: no metrics.csv or eval.csv (is it the --run "
                   "folder of curvpack train?)",
                   run);
    goto done;
  }
  read_csv(epath, e);
  FILE *f = fopen(script, "w");
  if (f == NULL) {
    rc = cli_error(CPK_EIO, "cannot write %s: %s", script, strerror(errno));
    goto done;
  }
  rc = write_script(f, run, tmp, m, e);
  if (fclose(f) != 0 && rc == 0)
    rc = cli_error(CPK_EIO, "cannot write %s: %s", script, strerror(errno));
  if (rc == 0)
    rc = run_gnuplot(script, log);
  if (rc == 0 && !is_png(tmp))
    rc = cli_error(CPK_EIO, "gnuplot wrote no PNG to %s", tmp);
  if (rc == 0 && rename(tmp, png) != 0)
    rc = cli_error(CPK_EIO, "cannot rename %s to %s: %s", tmp, png,
                   strerror(errno));
  if (rc == 0)
    printf("%s\n", png);
done:
  unlink(tmp);
  unlink(script);
  unlink(log);
cleanup:
  free(m);
  free(e);
  return rc;
}
