/*
 * cmd_train.c: `curvpack train`, training on (Fashion-)MNIST with SGD,
 * Adam, a damped diagonal-GGN step or KFAC, Cockpit's diagnostics on a
 * schedule, checkpoints and --resume. The library does the steps
 * (cpk_trainer); this file parses the options, runs the loop and reports.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train.h"

typedef struct train_opts {
  const char *problem, *model, *params, *data, *run;
  const char *epochs, *batch_size, *subset, *test_subset, *max_steps,
      *checkpoint_every;
  const char *optimizer, *lr, *momentum, *weight_decay, *damping, *update_every,
      *ggn, *betas, *eps, *ema, *kfac_damping;
  const char *track_every, *track, *preset, *quantities, *dump, *dump_ext;
  cli_common c; /* dtype, threads, device, seed, mc_samples */
  int resume;
} train_opts;

/* What the options say, checked and converted. */
typedef struct train_plan {
  cli_setup s;
  int64_t epochs, batch_size, subset, test_subset, max_steps, ckpt_every;
  int64_t track_every; /* 0: logarithmic */
  unsigned track;      /* CPK_Q_* (0: none) */
  cpk_optim_options optim;
  const char *data;
} train_plan;

/* Everything a run holds. */
typedef struct train_run {
  train_plan plan;
  cpk_model *model;
  cpk_context *ctx;
  cpk_optim *opt;
  cpk_trainer *tr;
  train_data data;
  train_dump dump;
  int dumping;
  train_log log;
  train_state state;
  progress prog;
  double session_start;
  double epoch_loss, epoch_samples; /* sums over the current epoch */
  unsigned noted;                   /* unavailable quantities reported */
  int64_t session_steps;            /* steps run by this session */
  double step_seconds;              /* their wall time (tracking included) */
  char *fallback_noted;             /* per parameter: kfac fallback said */
  int64_t good_step;                /* step of the last checkpoint, -1: none */
} train_run;

/* Report a run that diverged: the library's message (it names the step),
 * then where the last good state is. Returns the exit status. */
static int diverged(const train_run *r, const char *run, const char *what) {
  if (r->good_step < 0)
    return cli_error(CPK_ENONFINITE,
                     "%s; no checkpoint was written before it (start again "
                     "with a lower --lr)",
                     what);
  return cli_error(CPK_ENONFINITE,
                   "%s; the last good checkpoint is %s/checkpoint (step "
                   "%lld: continue from it with --resume)",
                   what, run, (long long)r->good_step);
}

/* Parameters that stopped being finite must not replace a good
 * checkpoint. Returns 0 or an exit status. */
static int check_params_finite(const train_run *r, const char *run) {
  for (int i = 0; i < cpk_model_num_params(r->model); i++) {
    const char *name;
    cpk_tensor *t;
    if (cpk_model_param(r->model, i, &name, &t) != CPK_OK)
      continue;
    const int64_t n = cpk_tensor_numel(t);
    for (int64_t k = 0; k < n; k++) {
      const double v = cpk_tensor_get(t, k);
      if (!isfinite(v)) {
        char what[256];
        snprintf(what, sizeof what,
                 "step %lld: parameter %s became non-finite (%g at flat "
                 "index %lld): the training diverged",
                 (long long)cpk_trainer_step(r->tr), name, v, (long long)k);
        return diverged(r, run, what);
      }
    }
  }
  return 0;
}

static int parse_double(const char *name, const char *text, double min,
                        double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !isfinite(v) || v < min)
    return cli_error(CPK_EUSAGE, "--%s: expected a number >= %g, got '%s'",
                     name, min, text);
  *out = v;
  return 0;
}

/* Say which option does not belong to the chosen optimizer. */
static int not_for(const char *option, const char *value, const char *kinds,
                   cpk_optim_kind kind) {
  if (value == NULL)
    return 0;
  return cli_error(CPK_EUSAGE, "--%s applies to %s, not to --optimizer %s",
                   option, kinds, cpk_optim_name(kind));
}

static int plan_optimizer(const train_opts *o, train_plan *p) {
  cpk_optim_kind kind = CPK_OPTIM_SGD;
  int rc, st;
  if (o->optimizer && (st = cpk_optim_parse(o->optimizer, &kind)) != CPK_OK)
    return cli_lib_error(st);
  cpk_optim_options *q = &p->optim;
  cpk_optim_defaults(kind, q);
  const int curv = kind == CPK_OPTIM_DIAG_GGN || kind == CPK_OPTIM_KFAC;
  if ((rc = not_for("momentum", kind == CPK_OPTIM_ADAM ? o->momentum : NULL,
                    "sgd, diag_ggn and kfac", kind)) ||
      (rc = not_for("betas", kind != CPK_OPTIM_ADAM ? o->betas : NULL, "adam",
                    kind)) ||
      (rc = not_for("eps", kind != CPK_OPTIM_ADAM ? o->eps : NULL, "adam",
                    kind)) ||
      (rc = not_for("damping", curv ? NULL : o->damping, "diag_ggn and kfac",
                    kind)) ||
      (rc = not_for("update-every", curv ? NULL : o->update_every,
                    "diag_ggn and kfac", kind)) ||
      (rc = not_for("ema", curv ? NULL : o->ema, "diag_ggn and kfac", kind)) ||
      (rc = not_for("ggn", kind == CPK_OPTIM_DIAG_GGN ? NULL : o->ggn,
                    "diag_ggn", kind)) ||
      (rc = not_for("kfac-damping",
                    kind == CPK_OPTIM_KFAC ? NULL : o->kfac_damping, "kfac",
                    kind)))
    return rc;
  if ((o->lr && (rc = parse_double("lr", o->lr, 0.0, &q->lr))) ||
      (o->momentum &&
       (rc = parse_double("momentum", o->momentum, 0.0, &q->momentum))) ||
      (o->weight_decay && (rc = parse_double("weight-decay", o->weight_decay,
                                             0.0, &q->weight_decay))) ||
      (o->damping &&
       (rc = parse_double("damping", o->damping, 0.0, &q->damping))) ||
      (o->eps && (rc = parse_double("eps", o->eps, 0.0, &q->eps))) ||
      (o->ema && (rc = parse_double("ema", o->ema, 0.0, &q->ema))) ||
      (o->update_every && (rc = cli_parse_int("update-every", o->update_every,
                                              1, &q->update_every))))
    return rc;
  if (o->betas) {
    char *end;
    q->beta1 = strtod(o->betas, &end);
    if (*end != ',' || (q->beta2 = strtod(end + 1, &end), *end != '\0'))
      return cli_error(CPK_EUSAGE,
                       "--betas: expected B1,B2 (e.g. 0.9,0.999), "
                       "got '%s'",
                       o->betas);
  }
  if (o->ggn) {
    if (strcmp(o->ggn, "exact") != 0 && strcmp(o->ggn, "mc") != 0)
      return cli_error(CPK_EUSAGE, "--ggn: expected exact or mc, got '%s'",
                       o->ggn);
    q->ggn_mc = strcmp(o->ggn, "mc") == 0;
  }
  if (o->kfac_damping) {
    if (strcmp(o->kfac_damping, "exact") == 0)
      q->kron_damping = CPK_KRON_DAMP_EXACT;
    else if (strcmp(o->kfac_damping, "factored") != 0)
      return cli_error(CPK_EUSAGE,
                       "--kfac-damping: expected exact or factored, got '%s'",
                       o->kfac_damping);
  }
  /* The library's range checks (momentum < 1, ...), before any file is
   * read. */
  if ((st = cpk_optim_check(q)) != CPK_OK)
    return cli_error(CPK_EUSAGE, "%s", cpk_last_error());
  return 0;
}

static int plan_tracking(const train_opts *o, train_plan *p) {
  int rc, st;
  if (o->track_every && o->track)
    return cli_error(CPK_EUSAGE, "train: --track-every and --track exclude "
                                 "each other");
  if (o->track && strcmp(o->track, "log") != 0)
    return cli_error(CPK_EUSAGE, "--track: expected log, got '%s'", o->track);
  if (o->track_every &&
      (rc = cli_parse_int("track-every", o->track_every, 1, &p->track_every)))
    return rc;
  if (o->preset && o->quantities)
    return cli_error(CPK_EUSAGE,
                     "train: --preset and --quantities exclude each other");
  if (o->preset && (st = cpk_track_preset(o->preset, &p->track)) != CPK_OK)
    return cli_lib_error(st);
  if (o->quantities &&
      (st = cpk_track_parse(o->quantities, &p->track)) != CPK_OK)
    return cli_lib_error(st);
  const int scheduled = o->track_every || o->track;
  if (scheduled && p->track == 0)
    cpk_track_preset("economy", &p->track);
  if (!scheduled && p->track != 0)
    p->track_every = 1; /* Cockpit's default schedule: every step */
  return 0;
}

static int make_plan(const train_opts *o, train_plan *p) {
  int rc;
  memset(p, 0, sizeof *p);
  p->epochs = 1;
  p->batch_size = 128;
  if ((rc = cli_require("train", "run", o->run)))
    return rc;
  if (!!o->problem == !!o->model)
    return cli_error(CPK_EUSAGE, "train: give --problem NAME or --model FILE "
                                 "(one of them)");
  if ((rc = cli_common_setup(&o->c, &p->s)))
    return rc;
  if ((o->epochs && (rc = cli_parse_int("epochs", o->epochs, 1, &p->epochs))) ||
      (o->batch_size &&
       (rc = cli_parse_int("batch-size", o->batch_size, 1, &p->batch_size))) ||
      (o->subset && (rc = cli_parse_int("subset", o->subset, 1, &p->subset))) ||
      (o->test_subset && (rc = cli_parse_int("test-subset", o->test_subset, 1,
                                             &p->test_subset))) ||
      (o->max_steps &&
       (rc = cli_parse_int("max-steps", o->max_steps, 1, &p->max_steps))) ||
      (o->checkpoint_every &&
       (rc = cli_parse_int("checkpoint-every", o->checkpoint_every, 1,
                           &p->ckpt_every))))
    return rc;
  if ((rc = plan_optimizer(o, p)) || (rc = plan_tracking(o, p)))
    return rc;
  p->data = o->data ? o->data : TRAIN_DEFAULT_DATA;
  return 0;
}

/* The options that fix the trajectory, for checking a resumed run. */
static void describe(const train_opts *o, const train_plan *p,
                     train_state *st) {
  const cpk_optim_options *q = &p->optim;
  train_state_config(st, "model", "%s", o->problem ? o->problem : o->model);
  train_state_config(st, "params", "%s", o->params ? o->params : "-");
  train_state_config(st, "data", "%s", p->data);
  train_state_config(st, "subset", "%lld", (long long)p->subset);
  train_state_config(st, "batch_size", "%lld", (long long)p->batch_size);
  train_state_config(st, "seed", "%llu", (unsigned long long)p->s.ctx.seed);
  train_state_config(st, "dtype", "%s", cpk_dtype_name(p->s.dtype));
  train_state_config(st, "mc_samples", "%d", p->s.ctx.mc_samples);
  train_state_config(st, "optimizer", "%s", cpk_optim_name(q->kind));
  train_state_config(st, "lr", "%.17g", q->lr);
  train_state_config(st, "momentum", "%.17g", q->momentum);
  train_state_config(st, "weight_decay", "%.17g", q->weight_decay);
  train_state_config(st, "damping", "%.17g", q->damping);
  train_state_config(st, "betas", "%.17g,%.17g", q->beta1, q->beta2);
  train_state_config(st, "eps", "%.17g", q->eps);
  train_state_config(st, "update_every", "%lld", (long long)q->update_every);
  train_state_config(st, "ema", "%.17g", q->ema);
  train_state_config(st, "ggn", "%s", q->ggn_mc ? "mc" : "exact");
  train_state_config(st, "kfac_damping", "%s",
                     q->kron_damping == CPK_KRON_DAMP_EXACT ? "exact"
                                                            : "factored");
}

/* The model of --problem or --model, built for (1, 28, 28) and
 * initialised (or loaded from --params). */
static int load_model(const train_opts *o, const train_plan *p,
                      cpk_model **model) {
  const int64_t shape[3] = {1, 28, 28};
  const char *text;
  int st;
  if (o->problem) {
    if ((st = cpk_problem_model(o->problem, &text)) == CPK_OK)
      st = cpk_model_parse(model, text, o->problem);
  } else {
    st = cpk_model_load(model, o->model);
  }
  if (st == CPK_OK)
    st = cpk_model_build(*model, 3, shape, p->s.dtype);
  if (st == CPK_OK && o->params)
    st = cpk_model_load_params(*model, o->params);
  else if (st == CPK_OK && o->problem)
    st = cpk_problem_init_params(*model, o->problem, p->s.ctx.seed);
  else if (st == CPK_OK)
    st = cpk_model_init_params(*model, p->s.ctx.seed);
  return st == CPK_OK ? 0 : cli_lib_error(st);
}

/* Whether step s is tracked: every K steps from 0, or the logarithmic
 * schedule 0 and floor(10^(k/10)) for k = 0, 1, 2, ... (0, 1, 2, 3, 5, 6,
 * 7, 10, 12, 15, 19, 25, 31, 39, 50, 63, 79, 100, 125, ...). */
static int tracked(const train_plan *p, int64_t s) {
  if (p->track == 0)
    return 0;
  if (p->track_every > 0)
    return s % p->track_every == 0;
  if (s == 0)
    return 1;
  const int k0 = (int)floor(10.0 * log10((double)s));
  for (int k = k0 - 1; k <= k0 + 1; k++)
    if (k >= 0 && (int64_t)floor(pow(10.0, k / 10.0) + 1e-9) == s)
      return 1;
  return 0;
}

static double run_time(const train_run *r) {
  return r->state.elapsed + cli_now() - r->session_start;
}

/* Write the records of a step (or of a flush). */
static int log_records(train_run *r, cpk_results *const *recs, int n) {
  for (int i = 0; i < n; i++)
    if (recs[i] != NULL) {
      int rc = train_log_record(&r->log, recs[i], run_time(r));
      if (rc != 0)
        return rc;
    }
  return 0;
}

static int checkpoint(train_run *r, const char *run) {
  cpk_results *rec = NULL;
  int st = cpk_trainer_flush(r->tr, &rec), rc;
  if (st != CPK_OK) {
    cpk_results_free(rec);
    return cli_lib_error(st);
  }
  rc = log_records(r, &rec, 1);
  cpk_results_free(rec);
  if (rc != 0 || (rc = check_params_finite(r, run)) != 0 ||
      (rc = train_log_sizes(&r->log, r->state.sizes)) != 0)
    return rc;
  train_state st2 = r->state;
  st2.elapsed = run_time(r);
  train_state_config(&st2, "epoch_loss", "%.17g", r->epoch_loss);
  train_state_config(&st2, "epoch_samples", "%.17g", r->epoch_samples);
  if ((rc = train_checkpoint_save(run, r->tr, &st2)) == 0)
    r->good_step = cpk_trainer_step(r->tr);
  return rc;
}

static int evaluate(train_run *r, double train_loss) {
  double loss, acc;
  char took[32];
  const double t0 = cli_now();
  int st = cpk_evaluate(r->ctx, r->model, r->data.test_x, r->data.test_y, 1000,
                        &loss, &acc);
  if (st != CPK_OK)
    return cli_lib_error(st);
  const int64_t epoch = cpk_trainer_epoch(r->tr);
  format_duration(took, sizeof took, run_time(r));
  if (epoch == 0)
    progress_line(&r->prog,
                  "epoch 0 (initial): test loss %.4f, test "
                  "accuracy %.2f%% (%lld samples, %.1f s)",
                  loss, 100.0 * acc, (long long)r->data.test_x->shape[0],
                  cli_now() - t0);
  else
    progress_line(&r->prog,
                  "epoch %lld: train loss %.4f, test loss %.4f, "
                  "test accuracy %.2f%% (%s)",
                  (long long)epoch, train_loss, loss, 100.0 * acc, took);
  return train_log_eval(&r->log, epoch, cpk_trainer_step(r->tr), run_time(r),
                        train_loss, loss, acc);
}

/* Say once what could not be done as asked. */
static void notes(train_run *r, const cpk_step_report *rep) {
  const unsigned fresh = rep->unavailable & ~r->noted;
  for (unsigned bit = 1; fresh && bit; bit <<= 1)
    if (fresh & bit)
      progress_line(&r->prog, "note: %s is recorded as null: %s",
                    cpk_track_name(bit), rep->unavailable_why);
  r->noted |= rep->unavailable;
  for (int i = 0; i < cpk_model_num_params(r->model); i++) {
    const char *name;
    if (!cpk_optim_fallback(r->opt, i) || r->fallback_noted[i])
      continue;
    cpk_model_param(r->model, i, &name, NULL);
    int layer = atoi(name);
    progress_line(&r->prog,
                  "note: kfac: no Kronecker factors for %s (%s) yet: it "
                  "takes plain gradient steps (identity curvature, -lr * g)",
                  name, cpk_model_layer_name(r->model, layer));
    r->fallback_noted[i] = 1;
  }
}

static int train_loop(train_run *r, const char *run) {
  const train_plan *p = &r->plan;
  const int64_t batches = cpk_trainer_batches(r->tr);
  int64_t total = p->epochs * batches;
  int rc = 0, fresh_checkpoint = 0;
  if (p->max_steps > 0 && p->max_steps < total)
    total = p->max_steps;
  progress_init(&r->prog, cpk_trainer_step(r->tr), total);
  while (cpk_trainer_epoch(r->tr) < p->epochs &&
         cpk_trainer_step(r->tr) < total) {
    const int64_t step = cpk_trainer_step(r->tr);
    const int64_t epoch = cpk_trainer_epoch(r->tr);
    const int track = tracked(p, step);
    const cpk_step_request req = {track ? p->track : 0,
                                  track && r->dumping ? r->dump.ext : NULL};
    cpk_step_report rep;
    const double t0 = cli_now();
    int st = cpk_trainer_run_step(r->tr, &req, &rep);
    if (st == CPK_ENONFINITE)
      return diverged(r, run, cpk_last_error());
    if (st != CPK_OK)
      return cli_lib_fail(r->ctx, st);
    rc = log_records(r, rep.records, 2);
    if (rc == 0 && rep.dump != NULL)
      rc = train_dump_write(&r->dump, run, step, rep.dump);
    r->step_seconds += cli_now() - t0;
    r->session_steps++;
    notes(r, &rep);
    r->epoch_loss += rep.loss * (double)rep.samples;
    r->epoch_samples += (double)rep.samples;
    const int64_t batch = cpk_trainer_batch(r->tr);
    progress_step(&r->prog, epoch, p->epochs, batch ? batch : batches, batches,
                  step + 1, rep.loss, rep.samples);
    cpk_step_report_clear(&rep);
    if (rc != 0)
      return cli_agree(r->ctx, rc);
    fresh_checkpoint = 0;
    if (batch == 0) { /* an epoch ended */
      if ((rc = evaluate(r, r->epoch_loss / r->epoch_samples)) != 0)
        return cli_agree(r->ctx, rc);
      r->epoch_loss = r->epoch_samples = 0.0;
    }
    if (batch == 0 || (p->ckpt_every && (step + 1) % p->ckpt_every == 0)) {
      if ((rc = checkpoint(r, run)) != 0)
        return cli_agree(r->ctx, rc);
      fresh_checkpoint = 1;
    }
    /* Under MPI rank 0 writes the logs: its failures reach the others. */
    if ((rc = cli_agree(r->ctx, rc)) != 0)
      return rc;
  }
  return fresh_checkpoint ? 0 : checkpoint(r, run);
}

/* A fresh run must not overwrite an earlier one. */
static int check_fresh(const char *run) {
  const char *const names[] = {"metrics.jsonl", "eval.jsonl", "checkpoint"};
  char path[4096];
  struct stat sb;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", run, names[i]);
    if (stat(path, &sb) == 0)
      return cli_error(CPK_EUSAGE,
                       "%s holds a run already (%s): pass --resume to "
                       "continue it, or choose another --run",
                       run, names[i]);
  }
  return 0;
}

static int start(train_run *r, const train_opts *o) {
  const train_plan *p = &r->plan;
  char ckpt[4096];
  train_state saved;
  int rc, st;
  if (cli_rank() == 0 && (rc = cli_make_dir(o->run)) != 0)
    return rc;
  describe(o, p, &r->state);
  if (!o->resume) {
    /* Under MPI rank 0 alone looks (and then writes): the others would see
     * its new logs; the agreement after start() tells them. */
    if ((cli_rank() == 0 && (rc = check_fresh(o->run)) != 0) ||
        (rc = train_log_open(&r->log, o->run, 0, NULL)) != 0)
      return rc;
    r->session_start = cli_now();
    return evaluate(r, NAN);
  }
  if ((rc = train_checkpoint_find(o->run, ckpt, sizeof ckpt, &saved)) != 0 ||
      (rc = train_state_check(&saved, &r->state)) != 0)
    return rc;
  if ((st = cpk_trainer_load(r->tr, ckpt)) != CPK_OK)
    return cli_lib_error(st);
  r->good_step = cpk_trainer_step(r->tr);
  for (int i = 0; i < saved.nconfig; i++) {
    if (strcmp(saved.config[i][0], "epoch_loss") == 0)
      r->epoch_loss = strtod(saved.config[i][1], NULL);
    if (strcmp(saved.config[i][0], "epoch_samples") == 0)
      r->epoch_samples = strtod(saved.config[i][1], NULL);
  }
  r->state.elapsed = saved.elapsed;
  memcpy(r->state.sizes, saved.sizes, sizeof saved.sizes);
  r->session_start = cli_now();
  progress_line(&r->prog,
                "resuming %s at step %lld (epoch %lld, batch "
                "%lld of %lld)",
                o->run, (long long)cpk_trainer_step(r->tr),
                (long long)cpk_trainer_epoch(r->tr) + 1,
                (long long)cpk_trainer_batch(r->tr),
                (long long)cpk_trainer_batches(r->tr));
  return train_log_open(&r->log, o->run, 1, saved.sizes);
}

/* RUN/summary.json: where the run is, and the cost of this session's
 * steps (passes, update, tracking, logs and dumps; no evaluation). */
static int write_summary(const train_run *r, const char *run) {
  char text[1024];
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  const double n = (double)r->session_steps;
  snprintf(text, sizeof text,
           "{\"steps\": %lld, \"epochs\": %lld, \"elapsed_s\": %.3f, "
           "\"session_steps\": %lld, \"session_step_s\": %.6f, "
           "\"seconds_per_step\": %.6f, \"threads\": %d, \"dtype\": "
           "\"%s\"}\n",
           (long long)cpk_trainer_step(r->tr),
           (long long)cpk_trainer_epoch(r->tr), run_time(r),
           (long long)r->session_steps, r->step_seconds,
           n > 0 ? r->step_seconds / n : 0.0,
           r->plan.s.ctx.threads > 0 ? r->plan.s.ctx.threads : (int)cores,
           cpk_dtype_name(r->plan.s.dtype));
  return cli_write_text(run, "summary.json", text);
}

static void run_free(train_run *r) {
  train_log_close(&r->log);
  cpk_trainer_free(r->tr);
  cpk_optim_free(r->opt);
  cpk_context_free(r->ctx);
  train_data_free(&r->data);
  cpk_model_free(r->model);
  free(r->fallback_noted);
}

static const char summary[] =
    "Train a network on (Fashion-)MNIST and track Cockpit's diagnostics "
    "while it trains. Writes RUN/metrics.jsonl and RUN/metrics.csv (one line "
    "per tracked step), RUN/eval.jsonl and RUN/eval.csv (test loss and "
    "accuracy before training and after each epoch), RUN/checkpoint/ "
    "(parameters as INDEX.NAME.npy, optimizer state; replaced atomically at "
    "each epoch end, every --checkpoint-every steps and at the end), "
    "RUN/dumps/STEP/ and RUN/summary.json (steps, time per step). "
    "Optimizers: sgd (momentum, PyTorch's formula), adam "
    "(PyTorch's), diag_ggn (theta -= lr g / (diag GGN + damping)) and kfac "
    "(damped Kronecker-factored inverse per weight; a layer without "
    "Kronecker factors (batch norm, or any layer whose factors have not "
    "landed yet) takes plain gradient steps -lr * g instead, and the run "
    "says so). Presets as Cockpit's: "
    "economy (alpha, distance, gradient histogram, gradient norm, norm, "
    "inner-product and orthogonality tests, loss, update size; plus "
    "accuracy, per-sample gradient norms, GSNR and variance), business (+ "
    "TIC, Hessian trace), full (+ top Hessian eigenvalue, 2-d histogram).";

int cmd_train(int argc, char **argv) {
  train_opts o = {0};
  const cli_opt opts[] = {
      {"problem", "NAME",
       "built-in problem (DeepOBS): fmnist_2c2d, fmnist_mlp or mnist_logreg",
       &o.problem, NULL},
      {"model", "FILE",
       "a model file instead (input (1, 28, 28), 10 class scores)", &o.model,
       NULL},
      {"params", "DIR",
       "start from these parameters (default: DeepOBS's initialisation of "
       "--problem, PyTorch's of --model)",
       &o.params, NULL},
      {"data", "DIR",
       "IDX files train-images-idx3-ubyte.gz etc. (default "
       "/usr/share/datasets/fashion-mnist, Debian package "
       "dataset-fashion-mnist)",
       &o.data, NULL},
      {"run", "DIR", "output folder (created)", &o.run, NULL},
      {"resume", NULL, "continue the run in --run from its checkpoint", NULL,
       &o.resume},
      {"epochs", "E", "epochs (default 1)", &o.epochs, NULL},
      {"batch-size", "B", "batch size (default 128)", &o.batch_size, NULL},
      {"subset", "N", "train on the first N training samples only", &o.subset,
       NULL},
      {"test-subset", "N", "evaluate on the first N test samples only",
       &o.test_subset, NULL},
      {"max-steps", "K", "stop after K steps in all (checkpoint included)",
       &o.max_steps, NULL},
      {"checkpoint-every", "K", "also checkpoint every K steps",
       &o.checkpoint_every, NULL},
      {"optimizer", "NAME",
       "sgd (default), adam, diag_ggn or kfac (kfac: layers without "
       "Kronecker factors yet take -lr * g, logged)",
       &o.optimizer, NULL},
      {"lr", "X",
       "learning rate (default sgd 0.01, adam 0.001, diag_ggn 0.01, kfac "
       "0.003)",
       &o.lr, NULL},
      {"momentum", "X", "momentum (default 0.9; not adam)", &o.momentum, NULL},
      {"weight-decay", "X", "L2 weight decay added to the gradient (0)",
       &o.weight_decay, NULL},
      {"damping", "X", "diag_ggn, kfac: damping (default 0.1)", &o.damping,
       NULL},
      {"update-every", "K",
       "diag_ggn, kfac: refresh the curvature every K steps (default 10)",
       &o.update_every, NULL},
      {"ema", "X",
       "diag_ggn, kfac: running average C = X C + (1 - X) C_new (default 0)",
       &o.ema, NULL},
      {"ggn", "KIND", "diag_ggn: mc (default) or exact", &o.ggn, NULL},
      {"kfac-damping", "KIND",
       "kfac: factored (default, (G + sqrt(d) I) (x) (A + sqrt(d) I)) or "
       "exact (G (x) A + d I)",
       &o.kfac_damping, NULL},
      {"betas", "B1,B2", "adam: betas (default 0.9,0.999)", &o.betas, NULL},
      {"eps", "X", "adam: eps (default 1e-8)", &o.eps, NULL},
      {"track-every", "K", "track the diagnostics every K steps (from 0)",
       &o.track_every, NULL},
      {"track", "log",
       "track at logarithmically spaced steps 0, 1, 2, 3, 5, ..., 10, 12, "
       "15, ...",
       &o.track, NULL},
      {"preset", "NAME",
       "economy (default), business or full, as Cockpit defines them",
       &o.preset, NULL},
      {"quantities", "LIST",
       "instead of a preset: loss, accuracy, grad_norm, sample_grad_norms, "
       "gsnr, variance, norm_test, inner_test, ortho_test, distance, "
       "update_size, hess_trace, hess_max_ev, tic, alpha, grad_hist_1d, "
       "grad_hist_2d",
       &o.quantities, NULL},
      {"dump", "P1,P2",
       "parameters whose tensors to dump at tracked steps (default: all)",
       &o.dump, NULL},
      {"dump-ext", "LIST",
       "what to dump to RUN/dumps/STEP/: extensions of curvpack compute, "
       "grad, param, batch",
       &o.dump_ext, NULL},
      {"dtype", "T", "float32 (default) or float64", &o.c.dtype, NULL},
      {"threads", "N", "threads (default: all cores)", &o.c.threads, NULL},
      {"device", "D", "cpu (default) or cuda", &o.c.device, NULL},
      {"seed", "S",
       "seed of the initialisation, batch order, dropout and Monte Carlo "
       "draws (default 0)",
       &o.c.seed, NULL},
      {"mc-samples", "M", "Monte Carlo samples of diag_ggn mc and kfac (1)",
       &o.c.mc_samples, NULL},
      {"max-memory", "SIZE", CLI_MAX_MEMORY_HELP, &o.c.max_memory, NULL},
  };
  int rc = cli_parse("train", summary, argc, argv, opts,
                     (int)(sizeof opts / sizeof opts[0]));
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  train_run r = {0};
  int st;
  r.good_step = -1;
  if ((rc = make_plan(&o, &r.plan)) != 0)
    return rc;
  /* Every rank reads the files itself: agree before any collective. */
  if ((rc = load_model(&o, &r.plan, &r.model)) != 0)
    goto loaded;
  if ((o.dump || o.dump_ext) &&
      (rc = train_dump_setup(&r.dump, r.model, o.dump, o.dump_ext)) != 0)
    goto loaded;
  r.dumping = o.dump || o.dump_ext;
  if (r.dumping && r.plan.track == 0) {
    rc = cli_error(CPK_EUSAGE, "train: --dump and --dump-ext write tracked "
                               "steps; add --track-every K or --track log");
    goto loaded;
  }
  r.fallback_noted = calloc((size_t)cpk_model_num_params(r.model) + 1, 1);
  if (r.fallback_noted == NULL) {
    rc = cli_error(CPK_ENOMEM, "out of memory");
    goto loaded;
  }
  if ((rc = train_data_load(r.plan.data, r.plan.s.dtype, r.plan.subset,
                            r.plan.test_subset, &r.data)) != 0)
    goto loaded;
  if ((st = cli_context_new(&r.ctx, &r.plan.s.ctx)) != CPK_OK ||
      (st = cpk_optim_new(&r.opt, &r.plan.optim, r.model)) != CPK_OK ||
      (st = cpk_trainer_new(&r.tr, r.ctx, r.model, r.opt, r.data.train_x,
                            r.data.train_y, r.plan.batch_size,
                            r.plan.s.ctx.seed)) != CPK_OK)
    rc = cli_lib_error(st);
loaded:
  if ((rc = cli_sync(rc)) != 0)
    goto done;
  progress_init(&r.prog, 0, 1);
  /* Under MPI every rank loaded the data and (on --resume) the checkpoint
   * itself; rank 0 writes. */
  if ((rc = cli_agree(r.ctx, start(&r, &o))) != 0 ||
      (rc = train_loop(&r, o.run)) != 0 || (rc = write_summary(&r, o.run)) != 0)
    goto done;
  char took[32];
  format_duration(took, sizeof took, run_time(&r));
  progress_line(&r.prog,
                "done: %lld steps, %s; metrics, checkpoint and "
                "evaluations in %s",
                (long long)cpk_trainer_step(r.tr), took, o.run);
done:
  run_free(&r);
  return rc;
}
