#include <stdlib.h>
#include <string.h>
#include <libcore.h>
#include "libparse.h"

const char *parse_version(void) { return "1.0"; }

int parse_fields(const char *text, struct parse_field *out, int max)
{
	char *copy = core_strdup(text), *save = NULL, *tok;
	int n = 0;

	for (tok = strtok_r(copy, ";", &save); tok && n < max; tok = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq)
			continue;
		*eq = '\0';
		out[n].key = core_strdup(core_trim(tok));
		out[n].value = core_strdup(core_trim(eq + 1));
		n++;
	}
	free(copy);
	return n;
}

void parse_free(struct parse_field *fields, int n)
{
	for (int i = 0; i < n; i++) {
		free(fields[i].key);
		free(fields[i].value);
	}
}
