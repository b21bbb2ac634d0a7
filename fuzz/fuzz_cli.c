/* fuzz_cli.c: the command-line parser of the program (cli/options.c):
 * cli_parse over the options of `curvpack compute` and `train`-like extras,
 * then the conversion of the common options (cli_common_setup), the
 * extension list and the integer and size parsers, as a command runs them
 * before it touches a file. The input is split into arguments at NUL bytes
 * and newlines. Output of --help and errors goes to stdout and stderr (run
 * with -close_fd_mask=3). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fuzz.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

#define FUZZ_CLI_MAX_ARGS 64

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
  char *buf = malloc(size + 1), *argv[FUZZ_CLI_MAX_ARGS];
  int argc = 0;
  if (buf == NULL)
    return 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  for (size_t i = 0, start = 0; i <= size && argc < FUZZ_CLI_MAX_ARGS; i++)
    if (buf[i] == '\0' || buf[i] == '\n') {
      buf[i] = '\0';
      argv[argc++] = buf + start;
      start = i + 1;
    }
  cli_common c;
  const char *ext = NULL, *repeat = NULL, *top = NULL;
  int flag = 0;
  memset(&c, 0, sizeof c);
  cli_opt opts[CLI_COMMON_NOPTS + 4];
  cli_common_opts(&c, opts);
  opts[CLI_COMMON_NOPTS] = (cli_opt){"ext", "LIST", "extensions", &ext, NULL};
  opts[CLI_COMMON_NOPTS + 1] =
      (cli_opt){"repeat", "R", "repeats", &repeat, NULL};
  opts[CLI_COMMON_NOPTS + 2] = (cli_opt){"top", "K", "top", &top, NULL};
  opts[CLI_COMMON_NOPTS + 3] = (cli_opt){"resume", NULL, "a flag", NULL, &flag};
  int rc =
      cli_parse("compute", "fuzzing", argc, argv, opts, CLI_COMMON_NOPTS + 4);
  if (rc == 0) {
    cli_setup s;
    int64_t v;
    size_t bytes;
    const int st = cli_common_setup(&c, &s);
    if (st != 0 && st != CLI_EXIT_USAGE && st != CLI_EXIT_FAILURE)
      __builtin_trap();
    if (ext != NULL)
      (void)cpk_extensions_check(ext);
    if (repeat != NULL)
      (void)cli_parse_int("repeat", repeat, 0, &v);
    if (top != NULL)
      (void)cli_parse_size("top", top, &bytes);
    (void)cli_require("compute", "model", c.model);
  } else if (rc != -1 && rc != CLI_EXIT_USAGE) {
    __builtin_trap();
  }
  cpk_memory_set_limit(0);
  free(buf);
  return 0;
}
