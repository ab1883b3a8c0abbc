#ifndef GANTRY_CLIBGIT2_SHIM_H
#define GANTRY_CLIBGIT2_SHIM_H
#include <git2.h>
#include <git2/sys/commit.h>

/* git_libgit2_opts is variadic, which Swift cannot call: the options Gantry needs, wrapped. */
static inline int gantry_git_disable_owner_validation(void) {
    return git_libgit2_opts(GIT_OPT_SET_OWNER_VALIDATION, 0);
}
static inline int gantry_git_set_search_path_empty(int level) {
    return git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, level, "");
}
#endif
