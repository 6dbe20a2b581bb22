/* toylang 1.x: a tiny RPN calculator (slot 1, installed as toylang1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	long stack[64];
	int sp = 0;
	char *save = NULL, *tok, *prog;

	if (argc < 2) {
		puts("toylang 1.4 (slot 1): usage: toylang1 '2 3 +'");
		return 0;
	}
	prog = strdup(argv[1]);
	for (tok = strtok_r(prog, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if ((strcmp(tok, "+") == 0 || strcmp(tok, "-") == 0) && sp >= 2) {
			long b = stack[--sp], a = stack[--sp];
			stack[sp++] = *tok == '+' ? a + b : a - b;
		} else if (sp < 64) {
			char *end;
			stack[sp++] = strtol(tok, &end, 10);
			if (*end) {
				fprintf(stderr, "toylang1: unknown word '%s'\n", tok);
				return 1;
			}
		}
	}
	free(prog);
	if (sp != 1) {
		fputs("toylang1: unbalanced program\n", stderr);
		return 1;
	}
	printf("%ld\n", stack[0]);
	return 0;
}
