/* train_log.c: the metrics and evaluation logs of a training run
 * (RUN/metrics.jsonl, RUN/metrics.csv, RUN/eval.jsonl, RUN/eval.csv). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train.h"

static const char *const files[4] = {"metrics.jsonl", "metrics.csv",
                                     "eval.jsonl", "eval.csv"};
#define EVAL_HEADER "epoch,step,time,train_loss,test_loss,test_accuracy\n"

static FILE **slot(train_log *l, int i) {
  FILE **s[4] = {&l->jsonl, &l->csv, &l->eval_jsonl, &l->eval_csv};
  return s[i];
}

/* The first line of a file (without its newline), malloc'ed; NULL when the
 * file is empty. */
static char *first_line(FILE *f) {
  char *line = NULL;
  size_t cap = 0;
  rewind(f);
  ssize_t n = getline(&line, &cap, f);
  if (n <= 0) {
    free(line);
    return NULL;
  }
  line[strcspn(line, "\n")] = '\0';
  return line;
}

int train_log_open(train_log *l, const char *run, int resume,
                   const long *sizes) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  char path[PATH_MAX];
  memset(l, 0, sizeof *l);
  l->run = run;
  for (int i = 0; i < 4; i++) {
    snprintf(path, sizeof path, "%s/%s", run, files[i]);
    if (resume) {
      FILE *probe = fopen(path, "rb");
      long have = -1;
      if (probe != NULL && fseek(probe, 0, SEEK_END) == 0)
        have = ftell(probe);
      if (probe != NULL)
        fclose(probe);
      if (have < sizes[i])
        return cli_error(CPK_EIO,
                         "--resume: %s holds %ld bytes, the checkpoint "
                         "expects at least %ld",
                         path, have < 0 ? 0 : have, sizes[i]);
      /* Lines written after the checkpoint belong to steps that run
       * again. */
      if (truncate(path, sizes[i]) != 0)
        return cli_error(CPK_EIO, "cannot cut %s back to the checkpoint: %s",
                         path, strerror(errno));
    }
    if ((*slot(l, i) = fopen(path, "a+")) == NULL) {
      int err = errno;
      train_log_close(l);
      return cli_error(CPK_EIO, "cannot open %s: %s", path, strerror(err));
    }
  }
  l->header = first_line(l->csv);
  char *eval = first_line(l->eval_csv);
  if (eval == NULL)
    fputs(EVAL_HEADER, l->eval_csv);
  free(eval);
  return 0;
}

void train_log_close(train_log *l) {
  for (int i = 0; i < 4; i++)
    if (*slot(l, i) != NULL) {
      fclose(*slot(l, i));
      *slot(l, i) = NULL;
    }
  free(l->header);
  l->header = NULL;
}

static void json_number(FILE *f, double v) {
  if (isfinite(v))
    fprintf(f, "%.17g", v);
  else
    fputs("null", f);
}

/* A tensor as a JSON number or nested list. */
static void json_tensor(FILE *f, const cpk_tensor *t, int axis, int64_t *at) {
  if (axis == t->ndim) {
    json_number(f, cpk_tensor_get(t, (*at)++));
    return;
  }
  fputc('[', f);
  for (int64_t i = 0; i < t->shape[axis]; i++) {
    if (i)
      fputs(", ", f);
    json_tensor(f, t, axis + 1, at);
  }
  fputc(']', f);
}

static int is_scalar(const cpk_results *r, int i) {
  return cpk_results_tensor(r, i)->ndim == 0;
}

static int is_step_or_epoch(const char *name) {
  return strcmp(name, "step") == 0 || strcmp(name, "epoch") == 0;
}

static double scalar(const cpk_results *r, const char *name) {
  const cpk_tensor *t = cpk_results_find(r, name);
  return t ? cpk_tensor_get(t, 0) : NAN;
}

/* The JSON line: step, epoch, time, every quantity, then per_param. */
static void write_json(FILE *f, const cpk_results *r, double time) {
  const int n = cpk_results_count(r);
  fprintf(f, "{\"step\": %lld, \"epoch\": %lld, \"time\": %.6f",
          (long long)scalar(r, "step"), (long long)scalar(r, "epoch"), time);
  for (int i = 0; i < n; i++) {
    const char *name = cpk_results_name(r, i);
    int64_t at = 0;
    if (strchr(name, '/') != NULL || is_step_or_epoch(name))
      continue;
    fprintf(f, ", \"%s\": ", name);
    json_tensor(f, cpk_results_tensor(r, i), 0, &at);
  }
  /* "P/what" entries, grouped by P in the order they first appear. */
  int open = 0;
  for (int i = 0; i < n; i++) {
    const char *name = cpk_results_name(r, i), *slash = strchr(name, '/');
    int seen = 0;
    if (slash == NULL)
      continue;
    const size_t plen = (size_t)(slash - name);
    for (int j = 0; j < i && !seen; j++) {
      const char *other = cpk_results_name(r, j);
      seen = strncmp(other, name, plen + 1) == 0;
    }
    if (seen)
      continue;
    fprintf(f, "%s\"%.*s\": {", open ? "}, " : ", \"per_param\": {", (int)plen,
            name);
    open = 1;
    int first = 1;
    for (int j = i; j < n; j++) {
      const char *other = cpk_results_name(r, j);
      if (strncmp(other, name, plen + 1) != 0)
        continue;
      fprintf(f, "%s\"%s\": ", first ? "" : ", ", other + plen + 1);
      json_number(f, cpk_tensor_get(cpk_results_tensor(r, j), 0));
      first = 0;
    }
  }
  fputs(open ? "}}}\n" : "}\n", f);
}

/* Whether entry i is a CSV column of the first kind (pass 0: totals) or
 * the second (pass 1: per-parameter "P/what" values). */
static int csv_column(const cpk_results *r, int i, int pass) {
  const char *name = cpk_results_name(r, i);
  return is_scalar(r, i) && !is_step_or_epoch(name) &&
         (strchr(name, '/') != NULL) == pass;
}

/* The CSV header of a record: step, epoch, time, the 0-d totals, then the
 * per-parameter values. */
static char *csv_header(const cpk_results *r) {
  size_t cap = 64, used;
  for (int i = 0; i < cpk_results_count(r); i++)
    cap += strlen(cpk_results_name(r, i)) + 1;
  char *h = malloc(cap);
  if (h == NULL)
    return NULL;
  used = (size_t)snprintf(h, cap, "step,epoch,time");
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < cpk_results_count(r); i++)
      if (csv_column(r, i, pass))
        used += (size_t)snprintf(h + used, cap - used, ",%s",
                                 cpk_results_name(r, i));
  return h;
}

int train_log_record(train_log *l, const cpk_results *r, double time) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  char *header = csv_header(r);
  if (header == NULL)
    return cli_error(CPK_ENOMEM, "out of memory for the metrics header");
  if (l->header == NULL) {
    fprintf(l->csv, "%s\n", header);
    l->header = header;
  } else if (strcmp(l->header, header) != 0) {
    cli_error(CPK_EINVAL,
              "%s/metrics.csv has the columns '%s', this run tracks '%s' "
              "(use the same quantities to continue a run, or a new --run)",
              l->run, l->header, header);
    free(header);
    return CLI_EXIT_FAILURE;
  } else {
    free(header);
  }
  write_json(l->jsonl, r, time);
  fprintf(l->csv, "%lld,%lld,%.6f", (long long)scalar(r, "step"),
          (long long)scalar(r, "epoch"), time);
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < cpk_results_count(r); i++) {
      if (!csv_column(r, i, pass))
        continue;
      double v = cpk_tensor_get(cpk_results_tensor(r, i), 0);
      if (isfinite(v))
        fprintf(l->csv, ",%.10g", v);
      else
        fputc(',', l->csv);
    }
  fputc('\n', l->csv);
  if (fflush(l->jsonl) != 0 || fflush(l->csv) != 0)
    return cli_error(CPK_EIO, "cannot write the metrics of %s: %s", l->run,
                     strerror(errno));
  return 0;
}

int train_log_eval(train_log *l, int64_t epoch, int64_t step, double time,
                   double train_loss, double test_loss, double test_acc) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  fprintf(l->eval_jsonl,
          "{\"epoch\": %lld, \"step\": %lld, \"time\": %.6f, "
          "\"train_loss\": ",
          (long long)epoch, (long long)step, time);
  json_number(l->eval_jsonl, train_loss);
  fprintf(l->eval_jsonl, ", \"test_loss\": %.17g, \"test_accuracy\": %.17g}\n",
          test_loss, test_acc);
  fprintf(l->eval_csv, "%lld,%lld,%.6f,", (long long)epoch, (long long)step,
          time);
  if (isfinite(train_loss))
    fprintf(l->eval_csv, "%.10g", train_loss);
  fprintf(l->eval_csv, ",%.10g,%.10g\n", test_loss, test_acc);
  if (fflush(l->eval_jsonl) != 0 || fflush(l->eval_csv) != 0)
    return cli_error(CPK_EIO, "cannot write the evaluation log of %s: %s",
                     l->run, strerror(errno));
  return 0;
}

int train_log_sizes(train_log *l, long *sizes) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  for (int i = 0; i < 4; i++) {
    FILE *f = *slot(l, i);
    if (fflush(f) != 0 || fseek(f, 0, SEEK_END) != 0 ||
        (sizes[i] = ftell(f)) < 0)
      return cli_error(CPK_EIO, "cannot write %s/%s: %s", l->run, files[i],
                       strerror(errno));
  }
  return 0;
}
