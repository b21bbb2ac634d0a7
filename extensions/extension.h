/*
 * extension.h: the extensions of `curvpack compute --ext` (one file each in
 * extensions/, listed in registry.c). Each extension is a small table of
 * handlers the engine calls during the backward pass; intermediates that
 * several extensions need are computed once per pass by the engine.
 */
#ifndef CPK_EXTENSION_H
#define CPK_EXTENSION_H

#include "internal.h"

typedef struct cpk__extension cpk__extension;

/* The contract's extension names and this build's implementations. */
typedef struct cpk__extension_entry {
  const char *name;
  const cpk__extension *impl; /* NULL: known, not implemented yet */
} cpk__extension_entry;

#define CPK__MAX_EXTENSIONS 24

/* Parse a comma-separated list into registry entries (duplicates dropped).
 * CPK_EUSAGE for an unknown name, CPK_ENOTSUP for one not implemented. */
int cpk__extensions_parse(const char *list, const cpk__extension_entry **out,
                          int *count);

#endif
