/* toylang 2.x: the RPN calculator grew * / and dup (slot 2, installed as toylang2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long stack[64];
static int sp;

static int binary(char op)
{
	long b, a;

	if (sp < 2)
		return -1;
	b = stack[--sp];
	a = stack[--sp];
	switch (op) {
	case '+': stack[sp++] = a + b; break;
	case '-': stack[sp++] = a - b; break;
	case '*': stack[sp++] = a * b; break;
	case '/':
		if (b == 0)
			return -1;
		stack[sp++] = a / b;
		break;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char *save = NULL, *tok, *prog;

	if (argc < 2) {
		puts("toylang 2.1 (slot 2): usage: toylang2 '2 3 * dup +'");
		return 0;
	}
	prog = strdup(argv[1]);
	for (tok = strtok_r(prog, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (strlen(tok) == 1 && strchr("+-*/", *tok)) {
			if (binary(*tok) < 0) {
				fprintf(stderr, "toylang2: cannot apply '%s'\n", tok);
				return 1;
			}
		} else if (strcmp(tok, "dup") == 0 && sp >= 1 && sp < 64) {
			stack[sp] = stack[sp - 1];
			sp++;
		} else if (sp < 64) {
			char *end;
			stack[sp++] = strtol(tok, &end, 10);
			if (*end) {
				fprintf(stderr, "toylang2: unknown word '%s'\n", tok);
				return 1;
			}
		}
	}
	free(prog);
	if (sp != 1) {
		fputs("toylang2: unbalanced program\n", stderr);
		return 1;
	}
	printf("%ld\n", stack[0]);
	return 0;
}
