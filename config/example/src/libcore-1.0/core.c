#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libcore.h"

const char *core_version(void) { return "1.0"; }

void *core_xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);
	if (!p) {
		fputs("libcore: out of memory\n", stderr);
		abort();
	}
	return p;
}

char *core_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(core_xmalloc(n), s, n);
}

unsigned long core_hash(const char *s)
{
	unsigned long h = 2166136261UL;
	for (; *s; s++)
		h = ((h ^ (unsigned char)*s) * 16777619UL) & 0xffffffffUL;
	return h;
}

char *core_trim(char *s)
{
	char *end;
	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}
