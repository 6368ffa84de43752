/* Freestanding stand-in for cross-target checks (see README.md). */
#ifndef ZS_CROSS_STDLIB_H
#define ZS_CROSS_STDLIB_H
#include <stddef.h>
void abort(void);
void *malloc(size_t n);
void free(void *p);
#endif
