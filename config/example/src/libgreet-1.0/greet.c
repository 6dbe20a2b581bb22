#include <libformat.h>
#include "libgreet.h"

#ifndef GREET_ABI
#error "GREET_ABI must be defined by the build"
#endif

int greet_abi(void) { return GREET_ABI; }

char *greet_message(const char *who)
{
	return fmt_sprintf("Hello from %s (libgreet %d)", who, GREET_ABI);
}
