/* options.c: option parsing, the common options, and error reporting. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int cli_error(int status, const char *fmt, ...) {
  char msg[1536];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cli_note_error(msg);
  /* Under MPI only rank 0 prints; another rank's failure reaches it through
   * cli_sync or the library's agreement. */
  if (cli_rank() == 0)
    fprintf(stderr, "curvpack: error: %s\n", msg);
  return status == CPK_EUSAGE ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}

int cli_lib_error(int status) {
  const char *msg = cpk_last_error();
  return cli_error(status, "%s", msg[0] ? msg : cpk_strerror(status));
}

static void print_help(const char *command, const char *summary,
                       const cli_opt *opts, int nopts) {
  printf("usage: curvpack %s [options]\n\n%s\n\noptions:\n", command, summary);
  for (int i = 0; i < nopts; i++) {
    char left[64];
    snprintf(left, sizeof left, "--%s%s%s", opts[i].name,
             opts[i].metavar ? " " : "",
             opts[i].metavar ? opts[i].metavar : "");
    printf("  %-26s %s\n", left, opts[i].help);
  }
  printf("  %-26s %s\n", "--help", "show this help");
}

int cli_parse(const char *command, const char *summary, int argc, char **argv,
              const cli_opt *opts, int nopts) {
  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      print_help(command, summary, opts, nopts);
      return -1;
    }
    if (strncmp(arg, "--", 2) != 0)
      return cli_error(CPK_EUSAGE,
                       "%s: unexpected argument '%s' (options start with --)",
                       command, arg);
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const cli_opt *o = NULL;
    for (int k = 0; k < nopts && o == NULL; k++)
      if (strlen(opts[k].name) == len && strncmp(opts[k].name, name, len) == 0)
        o = &opts[k];
    if (o == NULL)
      return cli_error(CPK_EUSAGE,
                       "%s: unknown option '--%.*s' (see curvpack %s --help)",
                       command, (int)len, name, command);
    if (o->metavar == NULL) {
      if (eq)
        return cli_error(CPK_EUSAGE, "%s: option '--%s' takes no value",
                         command, o->name);
      *o->flag = 1;
    } else if (eq) {
      *o->value = eq + 1;
    } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
      *o->value = argv[++i];
    } else {
      /* At the end, or followed by another option: as argparse does, the
       * next option is not taken for this one's value (--name=--x is). */
      return cli_error(CPK_EUSAGE, "%s: option '--%s' needs a value (%s)",
                       command, o->name, o->metavar);
    }
  }
  return 0;
}

void cli_common_opts(cli_common *c, cli_opt *o) {
  const cli_opt common[CLI_COMMON_NOPTS] = {
      {"model", "FILE", "model file (one layer per line)", &c->model, NULL},
      {"params", "DIR", "parameter directory (INDEX.NAME.npy)", &c->params,
       NULL},
      {"input", "FILE", "input batch .npy, (N, *input_shape)", &c->input, NULL},
      {"target", "FILE",
       "targets .npy: class indices (N,) for cross_entropy, else floats of "
       "the output's shape",
       &c->target, NULL},
      {"out", "DIR", "output directory (created if missing)", &c->out, NULL},
      {"loss", "NAME", "cross_entropy (default), mse or bce_with_logits",
       &c->loss, NULL},
      {"reduction", "R", "mean (default) or sum", &c->reduction, NULL},
      {"dtype", "T", "float32 (default) or float64", &c->dtype, NULL},
      {"threads", "N", "threads (default: all cores)", &c->threads, NULL},
      {"device", "D", "cpu (default) or cuda", &c->device, NULL},
      {"seed", "S", "seed of every random draw (default 0)", &c->seed, NULL},
      {"mc-samples", "M", "Monte Carlo samples (default 1)", &c->mc_samples,
       NULL},
      {"max-memory", "SIZE", CLI_MAX_MEMORY_HELP, &c->max_memory, NULL},
  };
  memcpy(o, common, sizeof common);
}

int cli_parse_size(const char *name, const char *text, size_t *out) {
  static const struct {
    const char *suffix;
    int shift;
  } units[] = {{"", 0},     {"B", 0},   {"K", 10},   {"KB", 10}, {"KiB", 10},
               {"M", 20},   {"MB", 20}, {"MiB", 20}, {"G", 30},  {"GB", 30},
               {"GiB", 30}, {"T", 40},  {"TB", 40},  {"TiB", 40}};
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  int shift = -1;
  for (size_t i = 0; end != text && i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].suffix) == 0)
      shift = units[i].shift;
  if (errno != 0 || end == text || shift < 0 || !(v > 0.0) || text[0] == '+' ||
      text[0] == ' ')
    return cli_error(CPK_EUSAGE,
                     "--%s: expected a size such as 512M, 4G or a number of "
                     "bytes, got '%s'",
                     name, text);
  double bytes = ldexp(v, shift);
  if (bytes < 1.0 || bytes >= 0x1p63)
    return cli_error(CPK_EUSAGE, "--%s: '%s' is out of range (1 byte to 8 EiB)",
                     name, text);
  *out = (size_t)bytes;
  return 0;
}

/* The smaller of physical memory and a cgroup (v2 or v1) memory limit. */
size_t cli_machine_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  size_t mem = pages > 0 && size > 0 ? (size_t)pages * (size_t)size : 0;
  const char *const files[] = {"/sys/fs/cgroup/memory.max",
                               "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
  for (size_t i = 0; i < 2; i++) {
    FILE *f = fopen(files[i], "r");
    unsigned long long v;
    if (f == NULL)
      continue;
    if (fscanf(f, "%llu", &v) == 1 && v > 0 && (mem == 0 || v < mem))
      mem = (size_t)v;
    fclose(f);
  }
  return mem;
}

int cli_parse_int(const char *name, const char *text, int64_t min,
                  int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min)
    return cli_error(CPK_EUSAGE, "--%s: expected an integer >= %lld, got '%s'",
                     name, (long long)min, text);
  *out = v;
  return 0;
}

int cli_require(const char *command, const char *name, const char *value) {
  if (value != NULL && value[0] != '\0')
    return 0;
  if (value != NULL)
    return cli_error(CPK_EUSAGE, "%s: --%s is empty (a path is expected)",
                     command, name);
  return cli_error(CPK_EUSAGE, "%s: missing --%s (see curvpack %s --help)",
                   command, name, command);
}

int cli_common_setup(const cli_common *c, cli_setup *s) {
  int64_t v;
  int rc;
  memset(s, 0, sizeof *s);
  s->loss = CPK_LOSS_CROSS_ENTROPY;
  s->reduction = CPK_REDUCTION_MEAN;
  s->dtype = CPK_F32;
  s->ctx.mc_samples = 1;
  if (c->loss && (rc = cpk_loss_parse(c->loss, &s->loss)) != CPK_OK)
    return cli_lib_error(rc);
  if (c->reduction &&
      (rc = cpk_reduction_parse(c->reduction, &s->reduction)) != CPK_OK)
    return cli_lib_error(rc);
  if (c->dtype && cpk_dtype_parse(c->dtype, &s->dtype) != CPK_OK)
    return cli_error(CPK_EUSAGE,
                     "--dtype: expected float32 or float64, got '%s'",
                     c->dtype);
  if (c->threads) {
    if ((rc = cli_parse_int("threads", c->threads, 1, &v)) != 0)
      return rc;
    s->ctx.threads = (int)(v > 4096 ? 4096 : v);
  }
  if (c->device) {
    if (strcmp(c->device, "cpu") == 0)
      s->ctx.device = CPK_DEVICE_CPU;
    else if (strcmp(c->device, "cuda") == 0)
      s->ctx.device = CPK_DEVICE_CUDA;
    else
      return cli_error(CPK_EUSAGE, "--device: expected cpu or cuda, got '%s'",
                       c->device);
  }
  if (c->seed) {
    if ((rc = cli_parse_int("seed", c->seed, 0, &v)) != 0)
      return rc;
    s->ctx.seed = (uint64_t)v;
  }
  if (c->mc_samples) {
    if ((rc = cli_parse_int("mc-samples", c->mc_samples, 1, &v)) != 0)
      return rc;
    if (v > 1000000)
      return cli_error(CPK_EUSAGE, "--mc-samples: at most 1000000, got %s",
                       c->mc_samples);
    s->ctx.mc_samples = (int)v;
  }
  size_t budget = cli_machine_memory();
  if (c->max_memory &&
      (rc = cli_parse_size("max-memory", c->max_memory, &budget)) != 0)
    return rc;
  cpk_memory_set_limit(budget);
  return 0;
}

int cli_load_model(const cli_common *c, cpk_dtype dtype, cpk_model **model,
                   cpk_tensor **input) {
  int rc;
  *model = NULL;
  *input = NULL;
  if ((rc = cpk_model_load(model, c->model)) != CPK_OK)
    return cli_lib_error(rc);
  if ((rc = cpk_npy_read(c->input, input)) != CPK_OK)
    goto fail;
  if ((*input)->ndim < 2) {
    char buf[64];
    cli_error(CPK_ESHAPE, "%s: input must be (N, *input_shape), got shape %s",
              c->input,
              cpk_shape_str(buf, sizeof buf, (*input)->ndim, (*input)->shape));
    rc = CPK_ESHAPE;
    goto fail_reported;
  }
  if ((rc = cpk_model_build(*model, (*input)->ndim - 1, (*input)->shape + 1,
                            dtype)) != CPK_OK)
    goto fail;
  if ((rc = cpk_model_load_params(*model, c->params)) != CPK_OK)
    goto fail;
  return 0;
fail:
  cli_lib_error(rc);
fail_reported:
  cpk_model_free(*model);
  cpk_tensor_free(*input);
  *model = NULL;
  *input = NULL;
  return rc == CPK_EUSAGE ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}

void cli_mark_ignored(cli_opt *opts, int nopts, const char *const *names) {
  for (; *names != NULL; names++)
    for (int i = 0; i < nopts; i++)
      if (strcmp(opts[i].name, *names) == 0)
        opts[i].help = "accepted and ignored by this command";
}

int cli_load_problem(const cli_common *c, const cli_setup *s,
                     cpk_model **model, cpk_tensor **input,
                     cpk_tensor **target) {
  cpk_pass_spec spec = {s->loss, s->reduction, NULL, 0};
  int st = CPK_OK, rc = cli_load_model(c, s->dtype, model, input);
  *target = NULL;
  if (rc == 0) {
    if ((st = cpk_npy_read(c->target, target)) == CPK_OK)
      st = cpk_check_pass(*model, &spec, *input, *target);
    if (st != CPK_OK)
      rc = cli_lib_error(st);
  }
  /* Under MPI each rank keeps its shard of the batch. */
  if (rc == 0 && (rc = cli_shard(input)) == 0)
    rc = cli_shard(target);
  /* Every rank loaded the files itself: agree before any collective. */
  if ((rc = cli_sync(rc)) == 0)
    return 0;
  cpk_tensor_free(*target);
  cpk_tensor_free(*input);
  cpk_model_free(*model);
  *target = *input = NULL;
  *model = NULL;
  return rc;
}
