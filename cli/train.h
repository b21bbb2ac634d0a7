/* train.h: the pieces of `curvpack train` and `curvpack plot` (cli/). */
#ifndef CPK_CLI_TRAIN_H
#define CPK_CLI_TRAIN_H

#include <stdio.h>

#include "cli.h"

/* ------------------------------------------------------------ train_data.c
 * The data set of a run: IDX files DIR/{train,t10k}-{images-idx3,
 * labels-idx1}-ubyte[.gz]. Images become [N, 1, 28, 28] floats in [0, 1]
 * of `dtype`, labels int64 [N]. subset > 0 keeps the first subset samples
 * (train), test_subset > 0 the first of the test set. Returns an exit
 * status (a missing default data set names its Debian package). */
#define TRAIN_DEFAULT_DATA "/usr/share/datasets/fashion-mnist"
typedef struct train_data {
  cpk_tensor *train_x, *train_y, *test_x, *test_y;
} train_data;
int train_data_load(const char *dir, cpk_dtype dtype, int64_t subset,
                    int64_t test_subset, train_data *d);
void train_data_free(train_data *d);

/* ------------------------------------------------------------- train_log.c
 * RUN/metrics.jsonl and RUN/metrics.csv (one line per tracked step),
 * RUN/eval.jsonl and RUN/eval.csv (one per evaluation), appended line by
 * line. A record is the trainer's: 0-d tensors are numbers, "P/what" ones
 * go under "per_param" (JSON) or into column "P/what" (CSV), arrays
 * (histograms) into JSON only; NaN is null (JSON) or empty (CSV). */
typedef struct train_log {
  FILE *jsonl, *csv, *eval_jsonl, *eval_csv;
  char *header; /* the metrics.csv header, once known */
  const char *run;
} train_log;
/* Open the four files for appending; with `resume`, first cut each back
 * to the size saved in the checkpoint (sizes[4]). */
int train_log_open(train_log *l, const char *run, int resume,
                   const long *sizes);
/* Append one record with its wall time. */
int train_log_record(train_log *l, const cpk_results *rec, double time);
/* Append one evaluation. */
int train_log_eval(train_log *l, int64_t epoch, int64_t step, double time,
                   double train_loss, double test_loss, double test_acc);
/* Flush, and give the current sizes (for the checkpoint). */
int train_log_sizes(train_log *l, long *sizes);
void train_log_close(train_log *l);

/* ------------------------------------------------------ train_checkpoint.c
 * RUN/checkpoint/: the trainer's state (cpk_trainer_save) and run.txt,
 * "key value" lines: the position, the elapsed time, the sizes of the log
 * files and the options that fix the trajectory ("config.NAME"). Replaced
 * atomically: written to RUN/.checkpoint.tmp, the old one moved to
 * RUN/checkpoint.old, the new one renamed in, the old one removed (a
 * crash between the renames leaves checkpoint.old, which resume takes). */
#define TRAIN_CONFIG_MAX 32
typedef struct train_state {
  double elapsed; /* seconds of training before this session */
  long sizes[4];  /* metrics.jsonl, metrics.csv, eval.jsonl, eval.csv */
  int nconfig;
  char config[TRAIN_CONFIG_MAX][2][256]; /* name, value */
} train_state;
int train_checkpoint_save(const char *run, const cpk_trainer *tr,
                          const train_state *st);
/* Find the checkpoint of RUN (its path into dir), read run.txt into st.
 * Returns an exit status. */
int train_checkpoint_find(const char *run, char *dir, size_t len,
                          train_state *st);
/* Add a config entry. */
void train_state_config(train_state *st, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Compare the config of a resumed run with the saved one (exit status). */
int train_state_check(const train_state *saved, const train_state *now);
/* rm -r PATH (no error when absent). */
int train_remove_tree(const char *path);
/* snprintf into a path buffer; 0, or an exit status (after the error) when
 * the path does not fit. */
int train_path(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* -------------------------------------------------------------- progress.c
 * A progress bar redrawn with \r when stdout is a terminal, plain log
 * lines otherwise. */
typedef struct progress {
  int tty;
  double start, last_draw;
  int64_t steps_total, steps_start, samples;
  int drawn; /* a bar is on the current line */
} progress;
void progress_init(progress *p, int64_t steps_done, int64_t steps_total);
/* After each step. */
void progress_step(progress *p, int64_t epoch, int64_t epochs, int64_t batch,
                   int64_t batches, int64_t step, double loss, int64_t samples);
/* A whole line (the bar is cleared first and redrawn by the next step). */
void progress_line(progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* "1h02m", "3m05s", "12s". */
void format_duration(char *buf, size_t len, double seconds);

/* ------------------------------------------------------------ train_dump.c
 * --dump P1,P2 --dump-ext e1,e2: validate the names, split off the ones
 * that are not extensions (grad, param, batch), and write a step's dump
 * to RUN/dumps/STEP/ (all or nothing). */
typedef struct train_dump {
  char params[1024]; /* comma-separated parameter names */
  char names[1024];  /* the --dump-ext names */
  char ext[1024];    /* the extensions among them, for the pass */
} train_dump;
int train_dump_setup(train_dump *d, const cpk_model *model, const char *params,
                     const char *names);
int train_dump_write(const train_dump *d, const char *run, int64_t step,
                     const cpk_results *dump);

#endif
