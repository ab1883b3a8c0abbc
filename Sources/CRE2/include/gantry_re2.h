// A small C face for Google's RE2 (Debian libre2-dev), so Swift can match in linear time.
#ifndef GANTRY_RE2_H
#define GANTRY_RE2_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gantry_re2 gantry_re2;

/// Compiles `pattern` (UTF-8, RE2 syntax). NULL on failure, with a message copied into `error`.
gantry_re2 *gantry_re2_compile(const char *pattern, size_t length, char *error, size_t error_capacity);

/// 1 when `text` contains a match anywhere (CEL `matches` semantics), 0 otherwise.
int gantry_re2_search(const gantry_re2 *regex, const char *text, size_t length);

/// The size of the compiled program (RE2's measure of its cost to build and run).
int gantry_re2_program_size(const gantry_re2 *regex);

void gantry_re2_free(gantry_re2 *regex);

#ifdef __cplusplus
}
#endif

#endif
