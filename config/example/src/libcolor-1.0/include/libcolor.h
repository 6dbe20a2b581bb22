/* libcolor: ANSI colours, only when the stream is a terminal. */
#ifndef LIBCOLOR_H
#define LIBCOLOR_H
#include <stdio.h>

enum color { COLOR_RED = 31, COLOR_GREEN = 32, COLOR_YELLOW = 33, COLOR_BLUE = 34 };

const char *color_version(void);
/* Writes text followed by a newline, coloured if stream is a tty and NO_COLOR is unset. */
int color_puts(FILE *stream, enum color c, const char *text);

#endif
