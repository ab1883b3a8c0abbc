#include "gantry_re2.h"

#include <re2/re2.h>
#include <cstring>
#include <new>
#include <string>

struct gantry_re2 {
    RE2 regex;
    gantry_re2(const re2::StringPiece &pattern, const RE2::Options &options) : regex(pattern, options) {}
};

static void copy_error(const std::string &message, char *error, size_t capacity) {
    if (error == nullptr || capacity == 0) return;
    size_t length = message.size() < capacity - 1 ? message.size() : capacity - 1;
    std::memcpy(error, message.data(), length);
    error[length] = '\0';
}

gantry_re2 *gantry_re2_compile(const char *pattern, size_t length, char *error, size_t error_capacity) {
    RE2::Options options;
    options.set_log_errors(false);
    options.set_encoding(RE2::Options::EncodingUTF8);
    // RE2 bounds the memory of a compiled program: a pattern over it is an error, not an allocation.
    options.set_max_mem(8 << 20);
    gantry_re2 *compiled = new (std::nothrow) gantry_re2(re2::StringPiece(pattern, length), options);
    if (compiled == nullptr) {
        copy_error("out of memory", error, error_capacity);
        return nullptr;
    }
    if (!compiled->regex.ok()) {
        copy_error(compiled->regex.error(), error, error_capacity);
        delete compiled;
        return nullptr;
    }
    return compiled;
}

int gantry_re2_search(const gantry_re2 *regex, const char *text, size_t length) {
    return RE2::PartialMatch(re2::StringPiece(text, length), regex->regex) ? 1 : 0;
}

int gantry_re2_program_size(const gantry_re2 *regex) { return regex->regex.ProgramSize(); }

void gantry_re2_free(gantry_re2 *regex) { delete regex; }
