#include <stdarg.h>
#include <stdio.h>
#include <libcore.h>
#include "libformat.h"

const char *fmt_version(void) { return "1.0"; }

char *fmt_sprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	char *buf;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	buf = core_xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(buf, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return buf;
}

char *fmt_tagged(const char *text)
{
	return fmt_sprintf("%s [#%08lx]", text, core_hash(text));
}
