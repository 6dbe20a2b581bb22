/* greeter: the top of the 4-deep chain greeter -> libgreet -> libformat -> libcore. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libgreet.h>
#ifdef WITH_COLOR
#include <libcolor.h>
#define FEATURES "+color"
#else
#define FEATURES "-color"
#endif

int main(int argc, char **argv)
{
	char *msg;

	if (argc > 1 && strcmp(argv[1], "--version") == 0) {
		printf("greeter 1.0 %s (libgreet %d)\n", FEATURES, greet_abi());
		return 0;
	}
	msg = greet_message(argc > 1 ? argv[1] : "the swarm");
#ifdef WITH_COLOR
	color_puts(stdout, COLOR_GREEN, msg);
#else
	puts(msg);
#endif
	free(msg);
	return 0;
}
