#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "libcolor.h"

const char *color_version(void) { return "1.0"; }

int color_puts(FILE *stream, enum color c, const char *text)
{
	if (isatty(fileno(stream)) && !getenv("NO_COLOR"))
		return fprintf(stream, "\033[1;%dm%s\033[0m\n", (int)c, text);
	return fprintf(stream, "%s\n", text);
}
