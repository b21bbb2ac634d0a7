/* error.c: status codes, their messages, and the per-thread last error. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[2048];

const char *cpk_strerror(int status) {
  switch (status) {
  case CPK_OK:
    return "success";
#define CPK__STATUS_MSG(name, code, msg)                                       \
  case CPK_##name:                                                             \
    return msg;
    CPK_STATUS_MAP(CPK__STATUS_MSG)
#undef CPK__STATUS_MSG
  default:
    return "unknown status";
  }
}

const char *cpk_err_name(int status) {
  switch (status) {
  case CPK_OK:
    return "CPK_OK";
#define CPK__STATUS_NAME(name, code, msg)                                      \
  case CPK_##name:                                                             \
    return "CPK_" #name;
    CPK_STATUS_MAP(CPK__STATUS_NAME)
#undef CPK__STATUS_NAME
  default:
    return "CPK_UNKNOWN";
  }
}

const char *cpk_last_error(void) { return last_error; }

void cpk_clear_error(void) { last_error[0] = '\0'; }

const char *cpk_version(void) { return CPK_VERSION_STRING; }

int cpk__fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return status;
}

int cpk__fail_prefix(int status, const char *fmt, ...) {
  char prefix[512], old[sizeof last_error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, last_error, sizeof old);
  if (old[0] == '\0')
    snprintf(last_error, sizeof last_error, "%s: %s", prefix,
             cpk_strerror(status));
  else
    snprintf(last_error, sizeof last_error, "%s: %.1500s", prefix, old);
  return status;
}
