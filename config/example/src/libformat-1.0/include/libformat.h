/* libformat: string formatting on top of libcore. */
#ifndef LIBFORMAT_H
#define LIBFORMAT_H

const char *fmt_version(void);
char *fmt_sprintf(const char *fmt, ...)    /* malloc'd result, free() it */
	__attribute__((format(printf, 1, 2)));
char *fmt_tagged(const char *text);        /* "text [#hash]" */

#endif
