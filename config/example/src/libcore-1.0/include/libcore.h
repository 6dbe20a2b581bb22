/* libcore: the bottom of the example dependency graph (allocation, hashing, text). */
#ifndef LIBCORE_H
#define LIBCORE_H
#include <stddef.h>

const char *core_version(void);
void *core_xmalloc(size_t size);           /* aborts instead of returning NULL */
char *core_strdup(const char *s);
unsigned long core_hash(const char *s);    /* 32-bit FNV-1a */
char *core_trim(char *s);                  /* strips blanks in place */

#endif
