/* progress.c: the training progress on stdout: a bar redrawn with \r on a
 * terminal, a log line every tenth of an epoch otherwise. */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "train.h"

void format_duration(char *buf, size_t len, double s) {
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60)
    snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
  else
    snprintf(buf, len, "%lds", t);
}

void progress_init(progress *p, int64_t steps_done, int64_t steps_total) {
  p->tty = isatty(STDOUT_FILENO);
  p->start = cli_now();
  p->last_draw = 0.0;
  p->steps_start = steps_done;
  p->steps_total = steps_total;
  p->samples = 0;
  p->drawn = 0;
}

void progress_step(progress *p, int64_t epoch, int64_t epochs, int64_t batch,
                   int64_t batches, int64_t step, double loss,
                   int64_t samples) {
  const double now = cli_now(), spent = now - p->start;
  const int64_t done = step - p->steps_start;
  char eta[32], line[256];
  p->samples += samples;
  const int last = batch == batches;
  if (p->tty && !last && now - p->last_draw < 0.1)
    return; /* at most ten redraws a second */
  if (!p->tty && !last && batch % (batches >= 10 ? batches / 10 : 1) != 0)
    return;
  p->last_draw = now;
  format_duration(
      eta, sizeof eta,
      done > 0 ? spent / (double)done * (double)(p->steps_total - step) : 0.0);
  const double rate = spent > 0 ? (double)p->samples / spent : 0.0;
  if (!p->tty) {
    printf("epoch %lld/%lld  step %lld/%lld  loss %.4f  %.0f samples/s  "
           "eta %s\n",
           (long long)epoch + 1, (long long)epochs, (long long)batch,
           (long long)batches, loss, rate, eta);
    fflush(stdout);
    return;
  }
  const int width = 24,
            fill = (int)((double)width * (double)batch / (double)batches);
  char bar[32];
  for (int i = 0; i < width; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  snprintf(line, sizeof line,
           "epoch %lld/%lld [%s] %lld/%lld loss %.4f %.0f samples/s eta %s",
           (long long)epoch + 1, (long long)epochs, bar, (long long)batch,
           (long long)batches, loss, rate, eta);
  printf("\r%-100s", line);
  fflush(stdout);
  p->drawn = 1;
}

void progress_line(progress *p, const char *fmt, ...) {
  va_list ap;
  if (p->drawn)
    printf("\r%-100s\r", "");
  p->drawn = 0;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}
