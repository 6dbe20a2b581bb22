/* libparse: "key=value;key=value" record parsing on top of libcore. */
#ifndef LIBPARSE_H
#define LIBPARSE_H

struct parse_field {
	char *key;
	char *value;
};

const char *parse_version(void);
/* Splits a copy of text on ';' and '='; returns the number of fields stored (<= max). */
int parse_fields(const char *text, struct parse_field *out, int max);
void parse_free(struct parse_field *fields, int n);

#endif
